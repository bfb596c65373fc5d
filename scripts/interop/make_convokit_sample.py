#!/usr/bin/env python3
"""Build a tiny ConvoKit corpus with convokit itself and dump it (reference output).

Usage: python make_convokit_sample.py OUT_PARENT_DIR [NAME]
Writes OUT_PARENT_DIR/NAME (default NAME: convokit) with ConvoKit's own Corpus.dump().
"""
import os
import sys

from convokit import Corpus, Speaker, Utterance


def build():
    alice = Speaker(id="agent-a", meta={"model": "mock-1", "role_in_game": "buyer"})
    bob = Speaker(id="agent-b", meta={"model": "mock-2", "role_in_game": "seller"})
    mod = Speaker(id="moderator", meta={"model": None, "role_in_game": "moderator"})
    utts = [
        # conversation ep-1: a branching tree rooted at ep-1
        Utterance(id="ep-1", speaker=mod, conversation_id="ep-1", reply_to=None, timestamp=0,
                  text="Negotiation starts. Item: lamp.", meta={"turn": 0, "score": 0.0, "final": False}),
        Utterance(id="ep-1-u1", speaker=alice, conversation_id="ep-1", reply_to="ep-1", timestamp=1,
                  text="I offer 10 coins.", meta={"turn": 1, "score": 0.5, "final": False}),
        Utterance(id="ep-1-u2", speaker=bob, conversation_id="ep-1", reply_to="ep-1-u1", timestamp=2,
                  text="15, and it's yours.", meta={"turn": 2, "score": 0.7, "final": False}),
        Utterance(id="ep-1-u3", speaker=alice, conversation_id="ep-1", reply_to="ep-1-u2", timestamp=3,
                  text="Deal \u2014 \"15\".", meta={"turn": 3, "score": 1.0, "final": True}),
        Utterance(id="ep-1-u2b", speaker=mod, conversation_id="ep-1", reply_to="ep-1-u1", timestamp=4,
                  text="(branch) Counter-offer rejected.", meta={"turn": 2, "score": 0.1, "final": True}),
        # conversation ep-2: a chain
        Utterance(id="ep-2", speaker=bob, conversation_id="ep-2", reply_to=None, timestamp=10,
                  text="Anyone selling a chair?", meta={"turn": 0, "score": 0.0, "final": False}),
        Utterance(id="ep-2-u1", speaker=alice, conversation_id="ep-2", reply_to="ep-2", timestamp=11,
                  text="No.", meta={"turn": 1, "score": 0.2, "final": True}),
    ]
    corpus = Corpus(utterances=utts)
    corpus.get_conversation("ep-1").meta["outcome"] = "deal"
    corpus.get_conversation("ep-1").meta["tags"] = ["negotiation", "lamp"]
    corpus.get_conversation("ep-2").meta["outcome"] = "no_deal"
    corpus.get_conversation("ep-2").meta["tags"] = []
    corpus.meta["name"] = "agora-sample"
    corpus.meta["config"] = {"seed": 7, "agents": 2}
    return corpus


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "samples"
    name = sys.argv[2] if len(sys.argv) > 2 else "convokit"
    os.makedirs(out, exist_ok=True)
    build().dump(name, base_path=out)
    print(os.path.join(out, name))
