"""Checks `agora serve` with the official `openai` Python client (the version pinned in
requirements.txt): models, chat, completion, streaming chat and completion, log-probs in
both layouts, and the errors a client sees (401 with a wrong key, 400 over the max-token
limit). Run by run.sh, which starts the server; reads AGORA_BASE_URL (…/v1) and
AGORA_API_KEY. Exits non-zero on the first failure."""

import os
import sys

import openai

BASE_URL = os.environ["AGORA_BASE_URL"]
API_KEY = os.environ.get("AGORA_API_KEY", "none")
client = openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=600)
MESSAGES = [{"role": "user", "content": "Say hello to the reader in one short sentence."}]
checks = 0


def check(condition, what):
    global checks
    if not condition:
        raise AssertionError(what)
    checks += 1


def models():
    listed = client.models.list().data
    check(len(listed) == 1 and listed[0].object == "model", f"one model listed: {listed}")
    return listed[0].id


def chat(model):
    reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=24, seed=1)
    check(reply.id.startswith("chatcmpl-") and reply.object == "chat.completion", f"chat id/object: {reply}")
    choice = reply.choices[0]
    check(choice.message.role == "assistant", "assistant role")
    check(isinstance(choice.message.content, str) and choice.message.content, "chat content")
    check(choice.finish_reason in ("stop", "length"), f"finish_reason {choice.finish_reason}")
    check(reply.usage.completion_tokens > 0, "chat usage")
    check(reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens, "total_tokens")
    print(f"chat: {choice.message.content!r}")


def completion(model):
    reply = client.completions.create(model=model, prompt="Once upon a time", max_tokens=16, seed=1)
    check(reply.id.startswith("cmpl-") and reply.object == "text_completion", f"completion id/object: {reply}")
    check(reply.choices[0].text, "completion text")
    check(reply.usage.completion_tokens > 0, "completion usage")
    print(f"completion: {reply.choices[0].text!r}")


def chat_stream(model):
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=24, seed=1, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    check(chunks[0].choices[0].delta.role == "assistant", "first chunk carries the role")
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    check(text, "streamed chat text")
    check(len(finishes) == 1, f"one finish_reason: {finishes}")
    check(chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0, "usage chunk last")
    check(len({chunk.id for chunk in chunks}) == 1, "one id per stream")
    print(f"streamed chat: {text!r} in {len(chunks)} chunks")


def completion_stream(model):
    chunks = list(client.completions.create(model=model, prompt="Once upon a time", max_tokens=16, stream=True))
    text = "".join(chunk.choices[0].text for chunk in chunks)
    check(text and all(chunk.object == "text_completion" for chunk in chunks), "streamed completion")
    check(chunks[-1].choices[0].finish_reason in ("stop", "length"), "finish_reason on the last chunk")
    print(f"streamed completion: {text!r} in {len(chunks)} chunks")


def chat_logprobs(model):
    reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    check(len(content) == reply.usage.completion_tokens, f"{len(content)} log-probs for {reply.usage.completion_tokens} tokens")
    for entry in content:
        check(entry.logprob <= 0 and isinstance(entry.bytes, list), f"token log-prob {entry}")
        check(len(entry.top_logprobs) == 2, f"two alternatives: {entry.top_logprobs}")
        check(entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob, "alternatives in order")
    check(bytes(b for entry in content for b in entry.bytes).decode("utf-8", "replace") == reply.choices[0].message.content, "bytes add up to the text")
    print(f"chat logprobs: {[(entry.token, round(entry.logprob, 3)) for entry in content]}")


def completion_logprobs(model):
    reply = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, logprobs=2)
    choice = reply.choices[0]
    logprobs = choice.logprobs
    count = len(logprobs.tokens)
    check(count == reply.usage.completion_tokens, "one entry per token")
    check(len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == len(logprobs.text_offset) == count, "parallel lists")
    check("".join(logprobs.tokens) == choice.text, "tokens add up to the text")
    check(all(len(top) <= 2 for top in logprobs.top_logprobs), "at most two alternatives")
    print(f"completion logprobs: {list(zip(logprobs.tokens, logprobs.token_logprobs))}")


def errors(model):
    wrong = openai.OpenAI(base_url=BASE_URL, api_key="wrong-key", max_retries=0)
    try:
        wrong.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4)
        check(False, "a wrong key must be refused")
    except openai.AuthenticationError as error:
        check(error.status_code == 401, "401 for a wrong key")
    try:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10**9)
        check(False, "max_tokens over the limit must be refused")
    except openai.BadRequestError as error:
        check(error.status_code == 400 and "max_tokens" in str(error), f"400 naming max_tokens: {error}")
    print("errors: 401 for a wrong key, 400 for max_tokens over the limit")


def main():
    print(f"openai {openai.__version__} against {BASE_URL}")
    model = models()
    for step in (chat, completion, chat_stream, completion_stream, chat_logprobs, completion_logprobs, errors):
        step(model)
    print(f"ok: {checks} checks passed")


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # noqa: BLE001 - any failure fails the check
        print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
