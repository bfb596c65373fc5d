"""Golden files for agora-model's tokenizer and chat-template tests.

Run from the repository root (no network, no model hub):

    /work/.venv-interop/bin/pip install gguf==0.19.0      # once
    HF_HUB_OFFLINE=1 /work/.venv-interop/bin/python scripts/goldens/make_text_goldens.py \
        [models/SmolLM2-135M-Instruct.Q4_1.gguf]

Pinned: transformers 5.23.0, tokenizers 0.23.3, jinja2 3.1.6, gguf 0.19.0.

It needs the default model's GGUF (SmolLM2-135M-Instruct, Apache-2.0; see README for how to
fetch it) and writes, under crates/agora-model/test_data/text/:

- smollm2/tokenizer.json, tokenizer_config.json, chat_template.jinja: SmolLM2's tokenizer
  rebuilt from the GGUF by transformers' own GGUF conversion. transformers 5.23 ignores
  `tokenizer.ggml.pre = "smollm"`, so its pre-tokenizer lacks the digit split that SmolLM2's
  published tokenizer.json has (Sequence[Digits(individual_digits), ByteLevel]) and that
  llama.cpp applies for "smollm" (`\\p{N}` before the GPT-2 regex); the script puts it back.
- smollm2/token_ids.json: the ids that tokenizer gives for a set of texts (numbers,
  punctuation, whitespace runs, non-ASCII, special tokens), the decoded strings, and for the
  texts where it matters the ids a tokenizer WITHOUT the digit split gives (so a test can
  show the goldens would catch a missing Digits step).
- chat_templates.json: SmolLM2's template (from the GGUF), the official Llama 3 and
  Llama 3.1 instruct templates and a plain ChatML template, rendered by transformers'
  `apply_chat_template(..., tokenize=False)` on several conversations.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

from gguf import GGUFReader
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates/agora-model/test_data/text"
GGUF = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"

# The official Meta-Llama-3-8B-Instruct template.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# The official Llama-3.1-8B-Instruct template (tools, date string, system-message extraction).
LLAMA3_1 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Plain ChatML, as agora's built-in fallback writes it.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TEXTS = [
    "Hello, world!",
    "1234",
    "3.14",
    "in 2024",
    "The year 1999 and 2000.",
    "  42",
    "x\n 7",
    "a  1  22   333",
    "Call 555-0199 now.",
    "1,000,000 dollars",
    "version 2.0.1-rc3",
    "$9.99 (was $19.99)",
    "12:30pm on 05/06/2024",
    "Mixed123abc456",
    "   leading spaces",
    "trailing spaces   ",
    "tabs\tand\nnewlines\n\n",
    "multiple     spaces  inside",
    "\n\n\n",
    " ",
    "don't you'll I'm we've THEY'RE",
    "Wait... what?! (yes) [no] {maybe} <tag> #1 @you",
    "code: fn main() { println!(\"{}\", x); }",
    "URL https://example.com/path?q=1&r=2",
    "Ça va? Très bien, naïve café résumé.",
    "日本語のテキスト",
    "Привет, мир!",
    "ثلاثة أرقام",
    "emoji 🙂👍🏽 and 🇫🇷",
    "😀",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "a<|im_end|>b",
]

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hi! How are you?"}],
    "system_user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "multi_turn": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why?"},
    ],
    "multi_turn_no_system": [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "Nothing, thanks."},
        {"role": "assistant", "content": "Goodbye!"},
    ],
    "non_ascii_whitespace": [
        {"role": "user", "content": "  Ça va? 日本語 🙂\n\n"},
        {"role": "assistant", "content": "\tTrès bien — merci!  "},
        {"role": "user", "content": "Привет {{ not a tag }} {% nor this %}"},
    ],
}

# Conversations that only one template can render (tools are Llama 3.1's; tool results are
# messages with role "tool").
LLAMA3_1_EXTRA = [
    {
        "name": "tools_in_user_message",
        "messages": [
            {"role": "system", "content": "Use tools when needed."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "tool", "content": "{\"temp_c\": 21}"},
        ],
        "kwargs": {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Current weather — in °C",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                            "required": ["city"],
                        },
                    },
                }
            ]
        },
    },
    {
        "name": "date_string_kwarg",
        "messages": [{"role": "user", "content": "What day is it?"}],
        "kwargs": {"date_string": "01 Jan 2030"},
    },
]


# Small templates that each exercise one Jinja2/transformers behaviour the renderer must copy.
PROBES = {
    "tojson": '{{ {"b": 1, "a": [1.5, "x\\"y", none, true, 1e-7, 100000000000000000000.0, -0.25]} | tojson }}',
    "tojson_indent": '{{ {"b": 1, "a": {"c": []}, "d": {}, "e": [1, "two"]} | tojson(indent=2) }}',
    "tojson_ascii_sorted": '{{ {"b": "é🙂", "a": 2} | tojson(ensure_ascii=true, sort_keys=true) }}',
    "tojson_separators": '{{ [1, 2, {"k": "v"}] | tojson(separators=[",", ":"]) }}',
    "tojson_no_html_escape": '{{ "tab\there <b>&</b> \'q\'" | tojson }}|{{ messages[0] | tojson }}',
    "python_methods": (
        '{{ "  hi  ".strip() }}|{{ "a,b,c".split(",") | join("+") }}|{{ "hello".startswith("he") }}'
        '|{{ messages[0].content.upper() }}|{{ "Hello World".title() }}|{{ "xxhixx".lstrip("x") }}'
        '|{{ "a-b".replace("-", "_") }}|{{ "abc".endswith(("c", "d")) }}'
    ),
    "python_printing": "{{ none }}|{{ true }}|{{ [1, 'a', none, false] }}|{{ {'k': 'v', 'n': 1} }}|{{ 1.0 }}|{{ 2 / 4 }}|{{ 7 // 2 }}|{{ ' a b '.split() }}",
    "special_tokens": "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token is defined }}|{{ tools is defined }}|{{ tools is none }}|{{ documents is none }}",
    "loop": "{% for m in messages %}{{ loop.index }}:{{ m.role | capitalize }}{% if not loop.last %}, {% endif %}{% endfor %}",
    "whitespace_control": """{% for m in messages %}
    {% if m.role == 'user' %}
  U: {{ m.content }}
    {% else %}
  A: {{ m.content }}
    {% endif %}
{%- endfor %}
  {{ 'end' }}
""",
    "namespace_continue": (
        "{% set ns = namespace(n=0, last='') %}{% for m in messages %}{% if m.role == 'system' %}{% continue %}"
        "{% endif %}{% set ns.n = ns.n + 1 %}{% set ns.last = m.role %}{% if ns.n == 2 %}{% break %}{% endif %}"
        "{% endfor %}{{ ns.n }} {{ ns.last }}"
    ),
    "filters": (
        "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join('|') }}"
        "|{{ messages[-1]['content'][:3] }}|{{ 'x' ~ 1 }}|{{ 'a' in 'cat' }}|{{ messages | length }}"
        "|{{ (messages | first).role }}|{{ '  pad  ' | trim }}|{{ messages[1:] | map(attribute='role') | list }}"
    ),
    "items": "{% for k, v in {'x': 1, 'y': [2]}.items() %}{{ k }}={{ v }};{% endfor %}{{ {'a': 1}.get('b', 'none') }}",
    "string_iterable": "{{ 'abc' is iterable }}|{{ 'abc' is string }}|{{ {'a': 1} is mapping }}|{{ messages[0] is mapping }}|{% for c in 'ab' %}[{{ c }}]{% endfor %}",
}

PROBE_MESSAGES = [
    {"role": "system", "content": "Sys"},
    {"role": "user", "content": "hey you"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "bye now"},
]


def gguf_metadata(path):
    reader = GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items() if name.startswith("tokenizer.")}


def smollm2_tokenizer(gguf_path):
    """SmolLM2's tokenizer from the GGUF with transformers' conversion, plus the digit split."""
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    assert backend["pre_tokenizer"]["type"] == "ByteLevel", backend["pre_tokenizer"]
    without_digits = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    return tokenizer, without_digits


def tiny_tokenizer(bos, eos):
    """A throwaway tokenizer that only carries the special tokens a template reads."""
    backend = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token="<unk>")


def main():
    if not GGUF.is_file():
        sys.exit(f"{GGUF}: not found (fetch the default model first, see README)")
    metadata = gguf_metadata(GGUF)
    assert metadata["tokenizer.ggml.pre"] == "smollm", metadata["tokenizer.ggml.pre"]

    smollm2, without_digits = smollm2_tokenizer(GGUF)
    folder = OUT / "smollm2"
    with tempfile.TemporaryDirectory() as scratch:
        smollm2.save_pretrained(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(Path(scratch) / name, folder / name)
        # Compact JSON: the same tokenizer in about half the bytes of save_pretrained's.
        Tokenizer.from_file(str(Path(scratch) / "tokenizer.json")).save(str(folder / "tokenizer.json"), pretty=False)
    (folder / "NOTICE").write_text(
        "tokenizer.json, tokenizer_config.json and chat_template.jinja come from SmolLM2-135M-Instruct\n"
        "(HuggingFaceTB, https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct), licensed under the\n"
        "Apache License 2.0. They were rebuilt from the model's GGUF by scripts/goldens/make_text_goldens.py.\n"
    )

    cases = []
    for text in TEXTS:
        ids = smollm2(text, add_special_tokens=False)["input_ids"]
        case = {
            "text": text,
            "ids": ids,
            "ids_add_special": smollm2(text, add_special_tokens=True)["input_ids"],
            "decoded": smollm2.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": smollm2.decode(ids, skip_special_tokens=True),
        }
        plain = without_digits.encode(text, add_special_tokens=False).ids
        if plain != ids:
            case["ids_without_digit_split"] = plain
        cases.append(case)
    differing = sum("ids_without_digit_split" in case for case in cases)
    assert differing > 0, "no golden text shows the digit split; add one"
    write_json(
        folder / "token_ids.json",
        {
            "vocab_size": len(smollm2),
            "eos_token": smollm2.eos_token,
            "bos_token": smollm2.bos_token,
            "pad_token": smollm2.pad_token,
            "cases": cases,
        },
    )

    templates = {
        "smollm2": (metadata["tokenizer.chat_template"], smollm2),
        "llama3": (LLAMA3, tiny_tokenizer("<|begin_of_text|>", "<|eot_id|>")),
        "llama3_1": (LLAMA3_1, tiny_tokenizer("<|begin_of_text|>", "<|eot_id|>")),
        "chatml": (CHATML, tiny_tokenizer(None, "<|im_end|>")),
    }
    renders = []
    for template_name, (source, tokenizer) in templates.items():
        tokenizer.chat_template = source
        runs = [(name, messages, {}) for name, messages in CONVERSATIONS.items()]
        if template_name == "llama3_1":
            runs += [(extra["name"], extra["messages"], extra["kwargs"]) for extra in LLAMA3_1_EXTRA]
        for conversation_name, messages, kwargs in runs:
            for add_generation_prompt in (True, False):
                rendered = tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
                )
                renders.append(
                    {
                        "template": template_name,
                        "conversation": conversation_name,
                        "messages": messages,
                        "add_generation_prompt": add_generation_prompt,
                        "kwargs": kwargs,
                        "expected": rendered,
                    }
                )
    probe_tokenizer = tiny_tokenizer("<s>", "</s>")
    probes = []
    for name, source in PROBES.items():
        probe_tokenizer.chat_template = source
        rendered = probe_tokenizer.apply_chat_template(PROBE_MESSAGES, tokenize=False, add_generation_prompt=False)
        probes.append({"name": name, "source": source, "expected": rendered})
    write_json(
        OUT / "chat_templates.json",
        {
            "templates": {
                name: {
                    "source": source,
                    "bos_token": tokenizer.bos_token,
                    "eos_token": tokenizer.eos_token,
                    "unk_token": tokenizer.unk_token,
                    "pad_token": tokenizer.pad_token,
                }
                for name, (source, tokenizer) in templates.items()
            },
            "renders": renders,
            "probes": {"messages": PROBE_MESSAGES, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "cases": probes},
        },
    )
    print(f"{len(cases)} token-id cases ({differing} change without the digit split), {len(renders)} renders")


def write_json(path, value):
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
