//! Discussions on a fake model: turn policies (the respond-back probability checked
//! statistically with a fixed seed), the moderator's policies, context windows, empty
//! replies, and resume after an interruption at every turn boundary.

use agora_core::{Persona, Role};
use agora_llm::{FakeBackend, FinishReason, Prompt, Reply, Request, Sampling, Usage};
use agora_sim::discussion::{Discussion, DiscussionPlan, SimTurn};
use agora_sim::policy::{ModeratorPolicy, TurnPolicy};
use agora_sim::prompt::{Agent, DiscussionLayout};
use agora_sim::runner::run_discussions;

fn agent(name: &str) -> Agent {
    Agent {
        name: name.into(),
        persona: Persona { name: name.into(), ..Persona::default() },
        instructions: "Reply.".into(),
        instructions_name: "plain".into(),
    }
}

fn plan(users: usize, turns: u32, policy: TurnPolicy, moderator: Option<ModeratorPolicy>) -> DiscussionPlan {
    DiscussionPlan {
        id: "d0000".into(),
        seed: 7,
        topic_name: "pets".into(),
        topic: "Cats are better than dogs.".into(),
        opening_speaker: "OP".into(),
        users: (0..users).map(|index| agent(&format!("U{index}"))).collect(),
        moderator_policy: moderator.clone().unwrap_or_default(),
        moderator: moderator.map(|_| agent("Mod")),
        turn_policy: policy,
        turns,
        context_window: 3,
        context: "A forum.".into(),
        layout: DiscussionLayout::default(),
        sampling: Sampling { max_tokens: 20, ..Sampling::default() },
    }
}

fn reply(text: &str) -> Reply {
    Reply {
        text: text.into(),
        finish_reason: FinishReason::Stop,
        usage: Usage::default(),
        logprobs: None,
        model: "fake".into(),
    }
}

/// Runs a discussion to the end, answering each request with `answer(request, turn index)`.
fn run_sync(mut discussion: Discussion, answer: impl Fn(&Request, u32) -> String) -> Discussion {
    while let Some(job) = discussion.next().unwrap() {
        let text = answer(&job.request, job.index);
        discussion.record(&job, &reply(&text)).unwrap();
    }
    discussion
}

fn user_text(request: &Request) -> String {
    match &request.prompt {
        Prompt::Chat(messages) => messages.last().map(|m| m.content.clone()).unwrap_or_default(),
        Prompt::Text(text) => text.clone(),
    }
}

fn speakers(discussion: &Discussion) -> Vec<String> {
    discussion.turns().iter().map(|turn| turn.speaker.clone()).collect()
}

#[test]
fn round_robin_with_a_moderator_after_every_user_turn() {
    let discussion = Discussion::resume(
        plan(3, 4, TurnPolicy::RoundRobin, Some(ModeratorPolicy::AfterEveryUserTurn)),
        vec![],
    )
    .unwrap();
    let done = run_sync(discussion, |_, index| format!("comment {index}"));
    assert_eq!(speakers(&done), ["U0", "Mod", "U1", "Mod", "U2", "Mod", "U0", "Mod"]);
    assert_eq!(done.turns()[1].role, Role::Moderator);
    assert!(done.is_finished());
}

#[test]
fn the_moderator_stays_silent_after_an_empty_turn_and_empty_turns_are_kept() {
    let discussion = Discussion::resume(
        plan(2, 3, TurnPolicy::RoundRobin, Some(ModeratorPolicy::AfterEveryUserTurn)),
        vec![],
    )
    .unwrap();
    let done =
        run_sync(discussion, |_, index| if index == 1 { "   ".into() } else { format!("comment {index}") });
    assert_eq!(speakers(&done), ["U0", "U1", "Mod", "U0", "Mod"]);
    assert!(done.turns()[0].is_empty());
    assert_eq!(done.turns()[0].raw, "   ");
    let conversation = done.to_conversation("exp");
    assert_eq!(conversation.turns.len(), 6, "opening post + 5 turns, the empty one included");
    assert_eq!(conversation.turns[1].labels.extra["empty"], true);
    assert_eq!(conversation.id, "sim-exp:d0000");
}

#[test]
fn every_n_and_as_participant_moderators() {
    let discussion = Discussion::resume(
        plan(2, 4, TurnPolicy::RoundRobin, Some(ModeratorPolicy::EveryNUserTurns { n: 2 })),
        vec![],
    )
    .unwrap();
    let done = run_sync(discussion, |_, index| format!("c{index}"));
    assert_eq!(speakers(&done), ["U0", "U1", "Mod", "U0", "U1", "Mod"]);
    let discussion =
        Discussion::resume(plan(2, 6, TurnPolicy::RoundRobin, Some(ModeratorPolicy::AsParticipant)), vec![])
            .unwrap();
    let done = run_sync(discussion, |_, index| format!("c{index}"));
    assert_eq!(speakers(&done), ["U0", "U1", "Mod", "U0", "U1", "Mod"]);
}

#[test]
fn agents_see_the_opening_post_and_only_the_last_k_comments() {
    let discussion = Discussion::resume(plan(2, 6, TurnPolicy::RoundRobin, None), vec![]).unwrap();
    let prompts = std::cell::RefCell::new(Vec::new());
    run_sync(discussion, |request, index| {
        prompts.borrow_mut().push(user_text(request));
        format!("comment {index}")
    });
    let prompts = prompts.into_inner();
    assert_eq!(prompts[0], "User OP posted: Cats are better than dogs.\n\nUser U0 posted:");
    // Turn 6 sees comments 3, 4 and 5 (window 3), and always the opening post.
    let last = &prompts[5];
    assert!(last.starts_with("User OP posted: Cats are better than dogs.\n"), "{last}");
    for seen in ["comment 3", "comment 4", "comment 5"] {
        assert!(last.contains(seen), "{last}");
    }
    for unseen in ["comment 1", "comment 2"] {
        assert!(!last.contains(unseen), "{last}");
    }
    assert!(last.ends_with("User U1 posted:"));
}

#[test]
fn empty_comments_are_not_shown_to_later_speakers() {
    let discussion = Discussion::resume(plan(2, 3, TurnPolicy::RoundRobin, None), vec![]).unwrap();
    let prompts = std::cell::RefCell::new(Vec::new());
    run_sync(discussion, |request, index| {
        prompts.borrow_mut().push(user_text(request));
        if index == 2 { String::new() } else { format!("comment {index}") }
    });
    let third = &prompts.borrow()[2];
    assert!(!third.contains("User U1 posted: \n") && !third.contains("User U1 posted:\n"), "{third}");
    assert_eq!(third.matches("posted:").count(), 3, "opening, comment 1, the cue: {third}");
}

#[test]
fn random_policy_never_lets_anyone_speak_twice_in_a_row() {
    let discussion = Discussion::resume(plan(4, 300, TurnPolicy::Random, None), vec![]).unwrap();
    let done = run_sync(discussion, |_, index| format!("c{index}"));
    let order = speakers(&done);
    assert!(order.windows(2).all(|pair| pair[0] != pair[1]));
    for user in ["U0", "U1", "U2", "U3"] {
        let count = order.iter().filter(|speaker| *speaker == user).count();
        assert!((50..=100).contains(&count), "{user}: {count} of 300");
    }
}

/// With probability p the addressee (here the speaker before the previous one: nobody
/// @mentions anyone) replies; otherwise one of the n-1 others does, the addressee among
/// them. So P(next = addressee) = p + (1-p)/(n-1). 2,000 turns with a fixed seed; the
/// bound is five standard deviations of a binomial proportion.
#[test]
fn respond_back_probability_holds_statistically() {
    for (users, probability) in [(4usize, 0.4f64), (3, 0.8), (5, 0.0)] {
        let turns = 2_000u32;
        let discussion =
            Discussion::resume(plan(users, turns, TurnPolicy::RespondBack { probability }, None), vec![])
                .unwrap();
        let done = run_sync(discussion, |_, index| format!("c{index}"));
        let order = speakers(&done);
        assert!(order.windows(2).all(|pair| pair[0] != pair[1]));
        let responded = order.windows(3).filter(|w| w[2] == w[0]).count() as f64;
        let trials = (order.len() - 2) as f64;
        let expected = probability + (1.0 - probability) / (users as f64 - 1.0);
        let observed = responded / trials;
        let bound = 5.0 * (expected * (1.0 - expected) / trials).sqrt();
        assert!(
            (observed - expected).abs() <= bound,
            "users {users}, p {probability}: observed {observed:.3}, expected {expected:.3} ± {bound:.3}"
        );
    }
}

#[test]
fn a_mentioned_user_is_the_addressee() {
    // p = 1: the addressee always replies. U-speakers mention "@U2" every time, so after
    // anyone but U2 speaks, U2 must speak next.
    let discussion =
        Discussion::resume(plan(4, 40, TurnPolicy::RespondBack { probability: 1.0 }, None), vec![]).unwrap();
    let done = run_sync(discussion, |_, _| "I disagree with @U2.".into());
    let order = speakers(&done);
    for pair in order.windows(2) {
        if pair[0] != "U2" {
            assert_eq!(pair[1], "U2", "{order:?}");
        }
    }
}

/// Interrupting after any turn and resuming from the stored turns gives the transcript of
/// an uninterrupted run (replies are a function of the request, as with a seeded model).
#[test]
fn resume_at_every_turn_boundary_gives_the_same_transcript() {
    let answer = |request: &Request, _: u32| {
        let prompt = user_text(request);
        let seed = request.sampling.seed.unwrap_or_default();
        if seed.is_multiple_of(7) {
            String::new()
        } else {
            format!("{} chars, seed {}", prompt.len(), seed % 1000)
        }
    };
    let the_plan =
        plan(4, 10, TurnPolicy::RespondBack { probability: 0.5 }, Some(ModeratorPolicy::AfterEveryUserTurn));
    let full = run_sync(Discussion::resume(the_plan.clone(), vec![]).unwrap(), answer);
    let expected: Vec<SimTurn> = full.turns().to_vec();
    for stop in 0..expected.len() {
        // Stored turns come back from the store in any order.
        let mut stored = expected[..stop].to_vec();
        stored.reverse();
        let resumed = run_sync(Discussion::resume(the_plan.clone(), stored).unwrap(), answer);
        assert_eq!(resumed.turns(), &expected[..], "resumed after {stop} turns");
    }
}

#[test]
fn stored_turns_with_a_gap_are_refused() {
    let the_plan = plan(2, 4, TurnPolicy::RoundRobin, None);
    let full =
        run_sync(Discussion::resume(the_plan.clone(), vec![]).unwrap(), |_, index| format!("c{index}"));
    let mut stored = full.turns().to_vec();
    stored.remove(1);
    let error = Discussion::resume(the_plan, stored).unwrap_err().to_string();
    assert!(error.contains("gap") && error.contains("d0000/t0003"), "{error}");
}

#[tokio::test]
async fn discussions_run_side_by_side_on_a_backend() {
    let backend = FakeBackend::new(agora_llm::FakeMode::Seeded);
    let discussions: Vec<Discussion> = (0..5)
        .map(|index| {
            let mut the_plan = plan(3, 6, TurnPolicy::Random, Some(ModeratorPolicy::AfterEveryUserTurn));
            the_plan.id = format!("d{index:04}");
            the_plan.seed = index;
            Discussion::resume(the_plan, vec![]).unwrap()
        })
        .collect();
    let mut seen = Vec::new();
    let finished = run_discussions(&backend, discussions, 3, |discussion, turn| {
        seen.push((discussion.plan().id.clone(), turn.index));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(finished.len(), 5);
    assert_eq!(seen.len(), finished.iter().map(|d| d.turns().len()).sum::<usize>());
    assert!(finished.iter().all(Discussion::is_finished));
    // Within a discussion, turns reach the sink in order.
    for id in 0..5 {
        let indices: Vec<u32> =
            seen.iter().filter(|(d, _)| *d == format!("d{id:04}")).map(|(_, index)| *index).collect();
        assert!(indices.windows(2).all(|pair| pair[1] == pair[0] + 1), "{indices:?}");
    }
    // Same seeds, same transcripts.
    let again = run_discussions(
        &backend,
        vec![Discussion::resume(finished[0].plan().clone(), vec![]).unwrap()],
        1,
        |_, _| Ok(()),
    )
    .await
    .unwrap();
    let original = finished.iter().find(|d| d.plan().id == again[0].plan().id).unwrap();
    assert_eq!(again[0].turns(), original.turns());
}
