//! PersonaGPT's training layout (af1tang/personaGPT, `preprocess_dataset.py`) built from
//! Persona-Chat conversations as agora's importer stores them.
//!
//! Each reply of the bot (the Persona-Chat "self" side, `Role::Assistant`, whose facts are
//! its participant's persona) is one example:
//!
//! ```text
//! <|p2|> fact 1 <eos> fact 2 <eos> ... <|sep|> <|start|> turn 1 <eos> turn 2 <eos> ... | reply <eos>
//! ```
//!
//! with loss on the reply and its EOS only. The tag is `<|p1|>` when the bot opened the
//! dialogue and `<|p2|>` when its partner did, as PersonaGPT numbers speakers by order.
//! When the bot speaks first there is no history and, as in PersonaGPT, `<|start|>` is
//! the first learned token. Each fact and each turn is tokenized on its own and ends
//! with the tokenizer's EOS token. Two differences from the original, both deliberate:
//! the first reply token is predicted from the context (PersonaGPT ran the context as a
//! cache and so never learned it), and dialogues are not cut at 20 turns; instead, an
//! example longer than `max_length` loses its oldest turns (reported as truncated) and is
//! skipped only when even the persona and the reply do not fit.

use std::path::PathBuf;

use agora_core::{Conversation, Role};
use agora_model::Tokenizer;

use crate::data::{DataOptions, LoadReport, SKIP_EMPTY_COMPLETION, SKIP_TOO_LONG, TokenizedExample};
use crate::error::{Result, TrainError};

/// PersonaGPT's added tokens, in the order its tokenizer has them: `<|sep|>` and `<|cls|>`
/// (given when loading), then `<|start|>`, `<|p1|>`, `<|p2|>` and the action-code marker
/// `<|act|>`.
pub const PERSONAGPT_TOKENS: [&str; 6] = ["<|sep|>", "<|cls|>", "<|start|>", "<|p1|>", "<|p2|>", "<|act|>"];

/// Names the conversations in the report, which has no file.
const REPORT_SOURCE: &str = "<Persona-Chat conversations>";

/// One example per bot reply of `conversations` (see the module documentation). The
/// report counts replies as records and names skipped and truncated ones by the 1-based
/// position of their conversation. The tokenizer must already hold [`PERSONAGPT_TOKENS`].
pub fn personagpt_examples(
    conversations: &[Conversation],
    tokenizer: &Tokenizer,
    options: &DataOptions,
) -> Result<(Vec<TokenizedExample>, LoadReport)> {
    let tokens = SpecialTokens::find(tokenizer)?;
    let mut report = LoadReport::new(&PathBuf::from(REPORT_SOURCE));
    let mut examples = Vec::new();
    for (index, conversation) in conversations.iter().enumerate() {
        let position = index + 1;
        let facts = bot_facts(conversation);
        let bot_opens = conversation.turns.first().is_some_and(|turn| turn.role == Role::Assistant);
        let mut context = vec![if bot_opens { tokens.p1 } else { tokens.p2 }];
        for fact in facts {
            context.extend(tokenizer.encode(fact, false)?);
            context.push(tokens.eos);
        }
        context.push(tokens.sep);
        context.push(tokens.start);

        let mut history: Vec<Vec<u32>> = Vec::new();
        for turn in &conversation.turns {
            let mut utterance = tokenizer.encode(turn.text.trim(), false)?;
            utterance.push(tokens.eos);
            if turn.role == Role::Assistant {
                report.records += 1;
                if turn.text.trim().is_empty() {
                    report.skip(SKIP_EMPTY_COMPLETION, position);
                } else {
                    match build_example(&context, &history, &utterance, position, options) {
                        Ok((example, truncated)) => {
                            if truncated {
                                report.truncated.push(position);
                            }
                            examples.push(example);
                            report.kept += 1;
                        }
                        Err(reason) => report.skip(reason, position),
                    }
                }
            }
            history.push(utterance);
        }
    }
    Ok((examples, report))
}

/// The bot's persona facts (none for the Persona-Chat variants without personas).
fn bot_facts(conversation: &Conversation) -> &[String] {
    conversation
        .participants
        .iter()
        .find(|participant| participant.role == Role::Assistant)
        .and_then(|participant| participant.persona.as_ref())
        .map_or(&[], |persona| persona.facts.as_slice())
}

/// Context, as much recent history as fits, and the reply; true when history was cut.
fn build_example(
    context: &[u32],
    history: &[Vec<u32>],
    reply: &[u32],
    position: usize,
    options: &DataOptions,
) -> std::result::Result<(TokenizedExample, bool), &'static str> {
    let fits = |length: usize| options.max_length == 0 || length <= options.max_length;
    let (context, reply): (&[u32], Vec<u32>) = match context.split_last() {
        // The bot opens the dialogue: `<|start|>` moves from the context to the reply.
        Some((start, persona)) if history.is_empty() => {
            (persona, std::iter::once(*start).chain(reply.iter().copied()).collect())
        }
        _ => (context, reply.to_vec()),
    };
    let mut first_kept = 0;
    let mut length = context.len() + history.iter().map(Vec::len).sum::<usize>() + reply.len();
    while !fits(length) && first_kept < history.len() {
        length -= history[first_kept].len();
        first_kept += 1;
    }
    if !fits(length) {
        return Err(SKIP_TOO_LONG);
    }
    let mut tokens = Vec::with_capacity(length);
    tokens.extend_from_slice(context);
    for utterance in &history[first_kept..] {
        tokens.extend_from_slice(utterance);
    }
    let mut targets = vec![false; tokens.len()];
    targets.extend(std::iter::repeat_n(true, reply.len()));
    tokens.extend(reply);
    if let Some(first) = targets.first_mut() {
        *first = false;
    }
    Ok((TokenizedExample { tokens, targets, line: position }, first_kept > 0))
}

/// The ids the layout is built from.
struct SpecialTokens {
    sep: u32,
    start: u32,
    p1: u32,
    p2: u32,
    eos: u32,
}

impl SpecialTokens {
    fn find(tokenizer: &Tokenizer) -> Result<SpecialTokens> {
        // A token is usable only when text holding it encodes to its single id.
        let single_id = |token: &str| -> Result<Option<u32>> {
            let id = tokenizer.token_to_id(token);
            let encoded = tokenizer.encode(token, false)?;
            Ok(id.filter(|id| encoded == [*id]))
        };
        let mut missing = Vec::new();
        let mut ids = Vec::new();
        for token in PERSONAGPT_TOKENS {
            match single_id(token)? {
                Some(id) => ids.push(id),
                None => missing.push(token),
            }
        }
        if !missing.is_empty() {
            return Err(TrainError::Other(format!(
                "the tokenizer lacks PersonaGPT's special tokens {}; add them first with \
                 Tokenizer::add_special_tokens(&PERSONAGPT_TOKENS) and grow the model's embeddings \
                 to the new vocabulary size",
                missing.join(" ")
            )));
        }
        let eos = tokenizer
            .eos_token()
            .and_then(|token| tokenizer.token_to_id(token))
            .or_else(|| tokenizer.eos_token_ids().first().copied())
            .ok_or_else(|| {
                TrainError::Other("the tokenizer has no end-of-sequence token, which ends every turn".into())
            })?;
        let id = |token: &str| {
            let position = PERSONAGPT_TOKENS.iter().position(|known| *known == token);
            position.and_then(|position| ids.get(position).copied()).ok_or_else(|| {
                TrainError::Other(format!("{token} is not one of PersonaGPT's special tokens"))
            })
        };
        Ok(SpecialTokens {
            sep: id("<|sep|>")?,
            start: id("<|start|>")?,
            p1: id("<|p1|>")?,
            p2: id("<|p2|>")?,
            eos,
        })
    }
}
