//! ConvoKit corpus folders: utterances.jsonl, speakers.json, conversations.json, corpus.json, index.json.
