#!/usr/bin/env python3
"""Check agora's exported files with the real libraries.

  --trl-dir DIR       every *.jsonl in DIR (and one level of subfolders, e.g. train/)
                      is loaded with `datasets` and checked with `trl.data_utils`.
  --convokit-dir DIR  a ConvoKit corpus folder, loaded with `convokit.Corpus`.

Prints one line per check ("PASS ..." / "FAIL ...", plus uncounted "WARN"/"INFO"
lines) and a final "N passed, N failed" line. Exit status: 0 when nothing failed,
1 when a check failed, 2 on bad usage or missing libraries.

Nothing is downloaded: the chat template is applied with a tokenizer built in this
script (a tiny `tokenizers` WordLevel model wrapped in PreTrainedTokenizerFast, with a
ChatML template).
"""

import argparse
import contextlib
import glob
import io
import json
import os
import re
import sys
import tempfile
import traceback
import warnings

# Never reach for a hub; keep output quiet and deterministic.
for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "CONVOKIT_BACKEND": "mem",
}.items():
    os.environ.setdefault(_k, _v)


class Failed(Exception):
    """A check failed; the message says why."""


class Report:
    def __init__(self, verbose=False):
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.verbose = verbose

    def check(self, name, fn, *args, **kwargs):
        """Run fn; PASS if it returns (its return value, if a str, is appended), FAIL if it raises."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                detail = fn(*args, **kwargs)
        except Failed as e:
            self.fail(name, str(e))
            return False
        except Exception as e:  # a library raised: that is a failure too
            msg = f"{type(e).__name__}: {e}"
            cause = e.__cause__ or e.__context__
            while cause is not None:  # datasets wraps the real parse error
                msg += f" <- {type(cause).__name__}: {cause}"
                cause = cause.__cause__ or cause.__context__
            if self.verbose:
                msg += "\n" + traceback.format_exc()
            self.fail(name, msg)
            return False
        self.ok(name, detail if isinstance(detail, str) else None)
        return True

    def ok(self, name, detail=None):
        self.passed += 1
        print(f"PASS {name}" + (f" ({detail})" if detail else ""), flush=True)

    def fail(self, name, msg):
        self.failed += 1
        print(f"FAIL {name}: {msg}", flush=True)

    @staticmethod
    def info(msg):
        print(f"INFO {msg}", flush=True)

    @staticmethod
    def warn(msg):
        print(f"WARN {msg}", flush=True)


def short(v, n=120):
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


# --------------------------------------------------------------------------- TRL

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is not none -%}{{- message['content'] -}}{%- endif -%}"
    "{%- if message.get('tool_calls') -%}{{- message['tool_calls'] | tojson -}}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

TRL_KEYS = ("text", "messages", "prompt", "completion", "chosen", "rejected", "label")
MESSAGE_KEYS = ("text", "messages", "prompt", "completion", "chosen", "rejected")
ROLES = {"system", "developer", "user", "assistant", "tool"}

# layout name -> the TRL columns it has (TRL's apply_chat_template accepts exactly these key sets)
LAYOUTS = {
    "language_modeling(text)": {"text"},
    "language_modeling(messages)": {"messages"},
    "prompt_only": {"prompt"},
    "prompt_completion": {"prompt", "completion"},
    "preference": {"prompt", "chosen", "rejected"},
    "preference_implicit_prompt": {"chosen", "rejected"},
    "unpaired_preference(kto)": {"prompt", "completion", "label"},
}
# exporter base names -> the layout they must have
NAME_LAYOUTS = [
    ("prompt_completion", "prompt_completion"),
    ("preference", "preference"),
    ("kto", "unpaired_preference(kto)"),
    ("messages", "language_modeling(messages)"),
    ("text", "language_modeling(text)"),
]


def build_tokenizer():
    """A tokenizer object with a ChatML chat_template, built locally (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    tok.chat_template = CHATML_TEMPLATE
    # sanity: the template renders
    out = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", repr(out)
    return tok


def is_message_list(v):
    return isinstance(v, list) and len(v) > 0 and all(isinstance(m, dict) and "role" in m for m in v)


def check_message_list(v, where):
    if not isinstance(v, list):
        raise Failed(f"{where}: expected a list of messages, got {type(v).__name__}")
    if not v:
        raise Failed(f"{where}: empty message list")
    for j, m in enumerate(v):
        if not isinstance(m, dict):
            raise Failed(f"{where}[{j}]: message is {type(m).__name__}, not an object")
        if m.get("role") not in ROLES:
            raise Failed(f"{where}[{j}]: role {m.get('role')!r} not one of {sorted(ROLES)}")
        c = m.get("content")
        if c is None:
            if not m.get("tool_calls"):
                raise Failed(f"{where}[{j}]: content is missing/null and there are no tool_calls")
        elif not isinstance(c, str):
            raise Failed(f"{where}[{j}]: content is {type(c).__name__}, expected a string")


def detect_layout(columns):
    trl_cols = {c for c in columns if c in TRL_KEYS}
    for name, keys in LAYOUTS.items():
        if trl_cols == keys:
            return name, trl_cols
    raise Failed(
        f"columns {sorted(columns)} match no TRL layout "
        f"(TRL columns {sorted(trl_cols)}; expected one of {[sorted(k) for k in LAYOUTS.values()]})"
    )


def expected_layout_from_name(fname):
    base = os.path.basename(fname).lower()
    for key, layout in NAME_LAYOUTS:
        if base.startswith(key) or f"/{key}" in fname.lower():
            return layout
    return None


def check_trl_file(rep, path, tok, cache_dir, max_rows):
    import datasets
    from trl.data_utils import (
        apply_chat_template,
        extract_prompt,
        is_conversational,
        maybe_apply_chat_template,
        maybe_extract_prompt,
        maybe_unpair_preference_dataset,
        unpair_preference_dataset,
    )

    name = path
    lname = os.path.basename(path).lower()
    state = {}

    # A split with no examples (a tiny corpus) is written as an empty file on purpose;
    # datasets cannot load an empty JSON file, so there is nothing to check.
    if os.path.getsize(path) == 0:
        rep.skipped += 1
        print(f"SKIP {name}: empty split file, nothing to check")
        return

    def load():
        if os.path.getsize(path) == 0:
            raise Failed("file is empty")
        ds = datasets.load_dataset("json", data_files=path, split="train", cache_dir=cache_dir)
        if ds.num_rows == 0:
            raise Failed("file loaded but has 0 rows")
        state["ds"] = ds
        return f"{ds.num_rows} rows, columns {ds.column_names}"

    if not rep.check(f"{name}: datasets.load_dataset('json', split='train')", load):
        return
    ds = state["ds"]
    n = min(ds.num_rows, max_rows) if max_rows else ds.num_rows
    rows = [ds[i] for i in range(n)]

    def layout():
        lay, trl_cols = detect_layout(ds.column_names)
        state["layout"], state["trl_cols"] = lay, trl_cols
        expected = expected_layout_from_name(path)
        if expected is not None and expected != lay:
            raise Failed(f"file name says {expected} but columns give {lay}")
        extra = sorted(set(ds.column_names) - trl_cols)
        return lay + (f"; extra columns {extra}" if extra else "")

    if not rep.check(f"{name}: layout from columns", layout):
        return
    lay, trl_cols = state["layout"], state["trl_cols"]
    msg_cols = [c for c in MESSAGE_KEYS if c in trl_cols]

    # conversational-ness from the value types, file name as a cross-check
    def conversational_types():
        kinds = set()
        for i, row in enumerate(rows):
            for c in msg_cols:
                v = row[c]
                if isinstance(v, str):
                    kinds.add("standard")
                elif is_message_list(v):
                    kinds.add("conversational")
                else:
                    raise Failed(f"row {i} column {c!r}: neither a string nor a list of messages: {short(v)}")
        if len(kinds) != 1:
            raise Failed(f"mixes standard (string) and conversational (message list) values: {sorted(kinds)}")
        conv = kinds.pop() == "conversational"
        if lay == "language_modeling(messages)" and not conv:
            raise Failed("'messages' column holds strings; TRL expects a list of {role, content}")
        if lay == "language_modeling(text)" and conv:
            raise Failed("'text' column holds message lists; TRL's standard language-modeling format is a string")
        if ("conversational" in lname or "messages" in lname) and not conv:
            raise Failed("file name says conversational but the values are plain strings")
        if "conversational" not in lname and not lay.startswith("language_modeling") \
                and expected_layout_from_name(path) is not None and conv:
            raise Failed("file name has no 'conversational' but the values are message lists")
        state["conv"] = conv
        return "conversational" if conv else "standard"

    if not rep.check(f"{name}: value types", conversational_types):
        return
    conv = state["conv"]

    def value_shapes():
        for i, row in enumerate(rows):
            for c in msg_cols:
                v = row[c]
                if conv:
                    check_message_list(v, f"row {i} {c}")
                elif not isinstance(v, str):
                    raise Failed(f"row {i} {c}: expected str, got {type(v).__name__}")
            if conv:
                for c in ("completion", "chosen", "rejected"):
                    if c in trl_cols and row[c][0]["role"] != "assistant":
                        raise Failed(f"row {i} {c}: first message role is {row[c][0]['role']!r}, expected 'assistant'")
                if "prompt" in trl_cols and row["prompt"][-1]["role"] not in ("user", "tool", "assistant"):
                    raise Failed(f"row {i} prompt: last role {row['prompt'][-1]['role']!r} "
                                 "(TRL's apply_chat_template accepts user/tool/assistant)")
                if "messages" in trl_cols and not any(m["role"] == "assistant" for m in row["messages"]):
                    raise Failed(f"row {i} messages: no assistant message")
            if "label" in trl_cols and not isinstance(row["label"], bool):
                raise Failed(f"row {i} label: expected bool, got {type(row['label']).__name__} {short(row['label'])}")
            if "chosen" in trl_cols and row["chosen"] == row["rejected"]:
                raise Failed(f"row {i}: chosen == rejected")
        extra = ""
        if "label" in trl_cols:
            dtype = getattr(ds.features["label"], "dtype", None)
            if dtype != "bool":
                raise Failed(f"'label' feature dtype is {dtype!r}, expected 'bool'")
            t = sum(1 for r in rows if r["label"])
            extra = f"label dtype bool; {t} true, {len(rows) - t} false"
        return f"{len(rows)} rows checked" + (f"; {extra}" if extra else "")

    rep.check(f"{name}: per-layout columns and value types", value_shapes)

    def is_conv():
        for i, row in enumerate(rows):
            got = is_conversational(row)
            if got != conv:
                raise Failed(f"row {i}: trl.data_utils.is_conversational -> {got}, expected {conv}")
        return f"{conv} for all rows"

    rep.check(f"{name}: trl.data_utils.is_conversational", is_conv)

    def chat_template():
        for i, row in enumerate(rows):
            out = maybe_apply_chat_template(row, tok)
            if not conv:
                if out is not row and out != row:
                    raise Failed(f"row {i}: standard example was changed by maybe_apply_chat_template")
                continue
            direct = apply_chat_template(row, tok)
            if direct != out:
                raise Failed(f"row {i}: apply_chat_template and maybe_apply_chat_template differ")
            want = {"text"} if "messages" in trl_cols else (trl_cols - {"label"})
            for k in want:
                if not isinstance(out.get(k), str):
                    raise Failed(f"row {i}: output {k!r} is not a string: {short(out.get(k))}")
            if "label" in trl_cols and out.get("label") is not row["label"]:
                raise Failed(f"row {i}: label not carried through")
            if "prompt" in trl_cols and not out["prompt"]:
                raise Failed(f"row {i}: rendered prompt is empty")
            for k in ("completion", "chosen", "rejected"):
                if k in trl_cols and not out[k].strip():
                    raise Failed(f"row {i}: rendered {k} is empty")
        # and the way TRL's trainers use it: Dataset.map over the whole file
        mapped = ds.map(maybe_apply_chat_template, fn_kwargs={"processing_class": tok})
        if conv:
            col = "text" if "messages" in trl_cols else sorted(trl_cols - {"label"})[0]
            if col not in mapped.column_names or not isinstance(mapped[0][col], str):
                raise Failed(f"Dataset.map(maybe_apply_chat_template) gave no string column {col!r}")
            return f"rendered {len(rows)} rows + Dataset.map; e.g. {short(mapped[0][col], 80)}"
        return "standard rows returned unchanged (+ Dataset.map)"

    rep.check(f"{name}: trl.data_utils.(maybe_)apply_chat_template", chat_template)

    if lay == "preference":

        def extract():
            for i, row in enumerate(rows):
                same = maybe_extract_prompt(row)
                if same is not row and same != row:
                    raise Failed(f"row {i}: maybe_extract_prompt changed an explicit-prompt example")
                implicit = {"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]}
                got = extract_prompt(implicit)
                p = got["prompt"]
                if conv:
                    if p[: len(row["prompt"])] != row["prompt"]:
                        raise Failed(f"row {i}: extract_prompt on prompt+chosen/prompt+rejected "
                                     f"recovered {short(p)} not starting with the prompt")
                else:
                    # TRL drops a trailing space from the prompt when chosen/rejected differ right after it
                    if len(p) < len(row["prompt"]) - 1 or not (row["prompt"] + " ").startswith(p[: len(row["prompt"])]):
                        raise Failed(f"row {i}: extract_prompt recovered {short(p)}, prompt was {short(row['prompt'])}")
                if p + got["chosen"] != implicit["chosen"] or p + got["rejected"] != implicit["rejected"]:
                    raise Failed(f"row {i}: extract_prompt split does not concatenate back")
            return "maybe_extract_prompt keeps explicit prompt; extract_prompt round-trips"

        rep.check(f"{name}: trl.data_utils.extract_prompt / maybe_extract_prompt", extract)

        def unpair():
            small = ds.select(range(n))
            up = unpair_preference_dataset(small)
            if not {"prompt", "completion", "label"} <= set(up.column_names):
                raise Failed(f"unpaired columns {up.column_names}")
            if up.num_rows != 2 * n:
                raise Failed(f"unpaired has {up.num_rows} rows, expected {2 * n}")
            labels = up["label"]
            if sum(1 for x in labels if x is True) != n or sum(1 for x in labels if x is False) != n:
                raise Failed("unpaired labels are not n True + n False")
            if is_conversational(up[0]) != conv:
                raise Failed("unpairing changed conversational-ness")
            again = maybe_unpair_preference_dataset(small)
            if again.num_rows != 2 * n:
                raise Failed("maybe_unpair_preference_dataset did not unpair")
            out = maybe_apply_chat_template(up[0], tok)
            if conv and not isinstance(out["completion"], str):
                raise Failed("chat template on an unpaired row gave no string completion")
            return f"{n} pairs -> {up.num_rows} KTO rows {up.column_names}"

        rep.check(f"{name}: trl.data_utils.unpair_preference_dataset", unpair)


def find_trl_files(d):
    files = sorted(glob.glob(os.path.join(d, "*.jsonl")) + glob.glob(os.path.join(d, "*", "*.jsonl")))
    # never treat a ConvoKit folder's files as TRL data
    return [f for f in files if os.path.basename(f) != "utterances.jsonl" and not os.path.basename(f).startswith("info.")]


def run_trl(rep, d, max_rows):
    if not os.path.isdir(d):
        rep.fail(f"--trl-dir {d}", "not a directory")
        return
    files = find_trl_files(d)
    if not files:
        rep.fail(f"--trl-dir {d}", "no *.jsonl files found")
        return
    state = {}

    def tokenizer():
        state["tok"] = build_tokenizer()
        return "local WordLevel tokenizer + ChatML chat_template"

    if not rep.check("build a local tokenizer with a chat template", tokenizer):
        return
    with tempfile.TemporaryDirectory(prefix="check_exports_hf_") as cache_dir:
        for f in files:
            check_trl_file(rep, f, state["tok"], cache_dir, max_rows)


# --------------------------------------------------------------------------- ConvoKit

CK_FILES = ("utterances.jsonl", "speakers.json", "conversations.json", "corpus.json", "index.json")
UTT_KEYS = ("id", "conversation_id", "text", "speaker", "meta", "timestamp")
TYPE_RE = re.compile(r"^<class '[A-Za-z_][\w.]*'>$")


def run_convokit(rep, d):
    if not os.path.isdir(d):
        rep.fail(f"--convokit-dir {d}", "not a directory")
        return
    raw = {}

    def files_present():
        missing = [f for f in CK_FILES if not os.path.isfile(os.path.join(d, f))]
        if missing:
            raise Failed(f"missing {missing}")
        utts = []
        with open(os.path.join(d, "utterances.jsonl"), encoding="utf-8") as fh:
            for ln, line in enumerate(fh, 1):
                if not line.strip():
                    raise Failed(f"utterances.jsonl line {ln} is blank (ConvoKit's loader would crash on it)")
                try:
                    utts.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise Failed(f"utterances.jsonl line {ln}: {e}")
        raw["utts"] = utts
        for f in CK_FILES[1:]:
            with open(os.path.join(d, f), encoding="utf-8") as fh:
                try:
                    raw[f] = json.load(fh)
                except json.JSONDecodeError as e:
                    raise Failed(f"{f}: {e}")
            if not isinstance(raw[f], dict):
                raise Failed(f"{f}: top level is {type(raw[f]).__name__}, expected an object")
        return f"{', '.join(CK_FILES)} parse as JSON"

    if not rep.check("convokit: required files present and valid JSON", files_present):
        return
    utts = raw["utts"]
    speakers_json = raw["speakers.json"]
    convos_json = raw["conversations.json"]
    corpus_json = raw["corpus.json"]
    index_json = raw["index.json"]

    def utt_records():
        if not utts:
            raise Failed("utterances.jsonl has no utterances")
        seen = set()
        for i, u in enumerate(utts):
            if not isinstance(u, dict):
                raise Failed(f"line {i + 1}: not an object")
            missing = [k for k in UTT_KEYS if k not in u]
            if "reply-to" not in u and "reply_to" not in u:
                missing.append("reply-to")
            if missing:
                raise Failed(f"utterance line {i + 1}: missing keys {missing}")
            for k in ("id", "conversation_id", "speaker"):
                if not isinstance(u[k], str):
                    raise Failed(f"utterance line {i + 1}: {k} is {type(u[k]).__name__}, expected str")
            if not isinstance(u["text"], str):
                raise Failed(f"utterance {u['id']!r}: text is not a string")
            if not isinstance(u["meta"], dict):
                raise Failed(f"utterance {u['id']!r}: meta is not an object")
            if u["id"] in seen:
                raise Failed(f"duplicate utterance id {u['id']!r}")
            seen.add(u["id"])
        return f"{len(utts)} utterances, keys {sorted(utts[0].keys())}"

    if not rep.check("convokit: utterances.jsonl records", utt_records):
        return

    def reply_key():
        bad = [u["id"] for u in utts if "reply-to" not in u]
        if bad:
            raise Failed(f"{len(bad)} utterances (e.g. {bad[0]!r}) use 'reply_to'; ConvoKit's dump writes "
                         "'reply-to' (its loader accepts both)")
        return "'reply-to', as Corpus.dump() writes it"

    rep.check("convokit: reply key spelled like ConvoKit's dump", reply_key)
    file_reply = {u["id"]: u.get("reply-to", u.get("reply_to")) for u in utts}
    file_convo_of = {u["id"]: u["conversation_id"] for u in utts}

    utt_ids = [u["id"] for u in utts]
    file_speakers = {u["speaker"] for u in utts}
    file_convos = {}
    for u in utts:
        file_convos.setdefault(u["conversation_id"], set()).add(u["id"])

    def component_files():
        for fname, ids, what in (
            ("speakers.json", file_speakers, "speaker"),
            ("conversations.json", set(file_convos), "conversation"),
        ):
            data = raw[fname]
            if set(data) != ids:
                raise Failed(f"{fname} keys differ from the {what} ids used in utterances.jsonl: "
                             f"only in {fname}: {sorted(set(data) - ids)[:5]}, "
                             f"only in utterances: {sorted(ids - set(data))[:5]}")
            for k, v in data.items():
                if not isinstance(v, dict) or not isinstance(v.get("meta"), dict):
                    raise Failed(f"{fname}[{k!r}] must be {{\"meta\": {{...}}, \"vectors\": [...]}}, got {short(v)}")
        return f"{len(file_speakers)} speakers, {len(file_convos)} conversations"

    rep.check("convokit: speakers.json / conversations.json match utterances", component_files)

    def index_file():
        for k in ("utterances-index", "speakers-index", "conversations-index", "overall-index", "version"):
            if k not in index_json:
                raise Failed(f"index.json lacks {k!r} (ConvoKitIndex.update_from_dict needs it)")
        if not isinstance(index_json["version"], int):
            raise Failed("index.json version is not an int")
        sections = {
            "utterances-index": [u["meta"] for u in utts],
            "speakers-index": [v["meta"] for v in speakers_json.values()],
            "conversations-index": [v["meta"] for v in convos_json.values()],
            "overall-index": [corpus_json],
        }
        for sec, metas in sections.items():
            idx = index_json[sec]
            if not isinstance(idx, dict):
                raise Failed(f"{sec} is not an object")
            for key, types in idx.items():
                if isinstance(types, str):
                    types = [types]
                if not isinstance(types, list) or not all(t == "bin" or TYPE_RE.match(t) for t in types):
                    raise Failed(f"{sec}[{key!r}] = {short(types)}; expected a list like [\"<class 'str'>\"]")
            for meta in metas:
                for key, value in meta.items():
                    if key not in idx:
                        raise Failed(f"meta key {key!r} is not in index.json {sec} "
                                     "(ConvoKit silently drops it when the corpus is dumped again)")
                    types = idx[key] if isinstance(idx[key], list) else [idx[key]]
                    if value is not None and types != ["bin"] and str(type(value)) not in types:
                        raise Failed(f"{sec}[{key!r}] lists {types} but a value is {str(type(value))} ({short(value, 60)})")
        return f"version {index_json['version']}; " + ", ".join(
            f"{s}: {len(index_json[s])} keys" for s in sections)

    rep.check("convokit: index.json covers all metadata with ConvoKit type strings", index_file)

    state = {}

    def load():
        import convokit

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            corpus = convokit.Corpus(filename=d)
        state["corpus"] = corpus
        text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
        noise = [l for l in text.splitlines() if "WARNING" in l.upper() or "ERROR" in l]
        if noise:
            raise Failed("ConvoKit printed warnings while loading: " + " | ".join(noise[:3]))
        return f"{len(corpus.utterances)} utterances in memory"

    if not rep.check(f"convokit: Corpus(filename={d!r}) loads", load):
        return
    corpus = state["corpus"]

    def counts():
        nu, nc, ns = (len(list(corpus.iter_utterances())), len(list(corpus.iter_conversations())),
                      len(list(corpus.iter_speakers())))
        want = (len(utt_ids), len(file_convos), len(file_speakers))
        if (nu, nc, ns) != want:
            raise Failed(f"corpus has {nu} utterances/{nc} conversations/{ns} speakers, "
                         f"files give {want[0]}/{want[1]}/{want[2]}")
        if set(corpus.get_utterance_ids()) != set(utt_ids):
            raise Failed("utterance ids differ from the file")
        return f"{nu} utterances, {nc} conversations, {ns} speakers"

    rep.check("convokit: counts match the files", counts)

    def content():
        for u in utts:
            cu = corpus.get_utterance(u["id"])
            if cu.text != u["text"] or cu.speaker.id != u["speaker"] or cu.conversation_id != u["conversation_id"]:
                raise Failed(f"utterance {u['id']!r}: text/speaker/conversation_id differ after loading")
            if cu.timestamp != u["timestamp"]:
                raise Failed(f"utterance {u['id']!r}: timestamp {cu.timestamp!r} != {u['timestamp']!r}")
            if cu.meta.to_dict() != u["meta"]:
                raise Failed(f"utterance {u['id']!r}: meta after loading {short(cu.meta.to_dict())} != file {short(u['meta'])}")
        for sid, v in speakers_json.items():
            if corpus.get_speaker(sid).meta.to_dict() != v["meta"]:
                raise Failed(f"speaker {sid!r}: meta differs after loading "
                             "(ConvoKit 5 moves speaker meta 'is_ai'/'ai_meta' into attributes)")
        for cid, v in convos_json.items():
            if corpus.get_conversation(cid).meta.to_dict() != v["meta"]:
                raise Failed(f"conversation {cid!r}: meta differs after loading")
        if corpus.meta.to_dict() != corpus_json:
            raise Failed(f"corpus meta {short(corpus.meta.to_dict())} != corpus.json {short(corpus_json)}")
        return "text, speaker, conversation_id, timestamp and all meta survive loading"

    rep.check("convokit: loaded objects equal the file contents", content)

    def reply_to():
        n = 0
        for utt in corpus.iter_utterances():
            if utt.reply_to != file_reply[utt.id]:
                raise Failed(f"utterance {utt.id!r}: reply_to {utt.reply_to!r} after loading, file has {file_reply[utt.id]!r}")
            if utt.reply_to is None:
                continue
            n += 1
            if not corpus.has_utterance(utt.reply_to):
                raise Failed(f"utterance {utt.id!r} replies to missing {utt.reply_to!r}")
            # compare the file's conversation ids: ConvoKit's loader may silently re-assign them
            if file_convo_of[utt.reply_to] != file_convo_of[utt.id]:
                raise Failed(f"utterance {utt.id!r} (conversation {file_convo_of[utt.id]!r}) replies to "
                             f"{utt.reply_to!r} in conversation {file_convo_of[utt.reply_to]!r}")
            if utt.reply_to == utt.id:
                raise Failed(f"utterance {utt.id!r} replies to itself")
        return f"{n} replies resolve within their conversation"

    rep.check("convokit: every reply_to resolves", reply_to)

    def trees():
        not_root_named = []
        for cid, ids in file_convos.items():
            convo = corpus.get_conversation(cid)
            got = convo.get_utterance_ids()
            if set(got) != ids or len(got) != len(ids):
                raise Failed(f"conversation {cid!r}: get_utterance_ids() {short(got)} != file {short(sorted(ids))}")
            if not convo.check_integrity(verbose=False):
                raise Failed(f"conversation {cid!r}: check_integrity() is False (not one tree with one root)")
            for how in ("dfs", "bfs", "preorder", "postorder"):
                walked = [u.id for u in convo.traverse(how)]
                if sorted(walked) != sorted(ids):
                    raise Failed(f"conversation {cid!r}: traverse({how!r}) visited {len(walked)} of {len(ids)}")
            paths = convo.get_root_to_leaf_paths()
            if not paths or any(p[0].reply_to is not None for p in paths):
                raise Failed(f"conversation {cid!r}: bad root-to-leaf paths")
            chron = convo.get_chronological_utterance_list()
            if len(chron) != len(ids):
                raise Failed(f"conversation {cid!r}: chronological list has {len(chron)} utterances")
            roots = [u.id for u in convo.iter_utterances() if u.reply_to is None]
            if roots != [cid]:
                not_root_named.append(cid)
        if not_root_named:
            rep.warn(f"convokit: {len(not_root_named)} conversation ids are not their root utterance's id "
                     f"(ConvoKit convention), e.g. {not_root_named[0]!r}")
        return (f"{len(file_convos)} conversations: get_utterance_ids, check_integrity, "
                "traverse dfs/bfs/preorder/postorder, root-to-leaf paths, chronological list")

    rep.check("convokit: conversation trees walk", trees)

    def dataframes():
        ud = corpus.get_utterances_dataframe()
        cd = corpus.get_conversations_dataframe()
        sd = corpus.get_speakers_dataframe()
        if (len(ud), len(cd), len(sd)) != (len(utt_ids), len(file_convos), len(file_speakers)):
            raise Failed("dataframe sizes differ from the counts")
        return f"utterances df columns {list(ud.columns)}"

    rep.check("convokit: get_*_dataframe()", dataframes)

    def redump():
        with tempfile.TemporaryDirectory(prefix="check_exports_ck_") as tmp:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                corpus.dump("redump", base_path=tmp, force_version=index_json["version"])
            rd = os.path.join(tmp, "redump")
            with open(os.path.join(rd, "utterances.jsonl"), encoding="utf-8") as fh:
                re_utts = {u["id"]: u for u in map(json.loads, fh)}
            for u in utts:
                r = re_utts.get(u["id"])
                mine = dict(u)
                mine.setdefault("vectors", [])
                if "reply_to" in mine and "reply-to" not in mine:  # checked separately above
                    mine["reply-to"] = mine.pop("reply_to")
                if r != mine:
                    keys = sorted(k for k in set(r) | set(mine) if r.get(k) != mine.get(k))
                    raise Failed(f"utterance {u['id']!r} re-dumped differs in {keys}: ours {short({k: mine.get(k) for k in keys})}"
                                 f" vs convokit {short({k: r.get(k) for k in keys})}")
            for f in CK_FILES[1:]:
                with open(os.path.join(rd, f), encoding="utf-8") as fh:
                    theirs = json.load(fh)
                mine = raw[f]
                if f in ("speakers.json", "conversations.json"):  # a missing "vectors" means []
                    mine = {k: {"vectors": [], **v} for k, v in mine.items()}
                if f == "index.json":
                    theirs = {k: v for k, v in theirs.items() if k != "vectors"}
                    mine = {k: v for k, v in mine.items() if k != "vectors"}
                if theirs != mine:
                    raise Failed(f"{f} re-dumped by convokit differs: ours {short(mine, 200)} vs convokit {short(theirs, 200)}")
        return "Corpus.dump() reproduces every file (JSON-equal)"

    rep.check("convokit: re-dump by ConvoKit equals the input", redump)


# --------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trl-dir", help="folder with TRL *.jsonl exports")
    ap.add_argument("--convokit-dir", help="ConvoKit corpus folder")
    ap.add_argument("--max-rows", type=int, default=2000,
                    help="rows per file checked row by row (0 = all; default 2000)")
    ap.add_argument("-v", "--verbose", action="store_true", help="tracebacks for library errors")
    args = ap.parse_args(argv)
    if not args.trl_dir and not args.convokit_dir:
        ap.error("give --trl-dir and/or --convokit-dir")

    try:
        if args.trl_dir:
            import datasets  # noqa: F401
            import transformers  # noqa: F401
            import trl  # noqa: F401
        if args.convokit_dir:
            with contextlib.redirect_stdout(io.StringIO()):
                import convokit  # noqa: F401
    except ImportError as e:
        print(f"error: {e}. Create the venv: see README.md (pip install -r requirements.txt)", file=sys.stderr)
        return 2

    rep = Report(verbose=args.verbose)
    if args.trl_dir:
        import datasets as _ds
        import trl, transformers
        _ds.disable_progress_bars()
        _ds.logging.set_verbosity_error()
        rep.info(f"datasets {_ds.__version__}, trl {trl.__version__}, transformers {transformers.__version__}")
        run_trl(rep, args.trl_dir, args.max_rows)
    if args.convokit_dir:
        from importlib.metadata import version
        rep.info(f"convokit {version('convokit')}")
        run_convokit(rep, args.convokit_dir)
    print(f"{rep.passed} passed, {rep.failed} failed, {rep.skipped} skipped")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
