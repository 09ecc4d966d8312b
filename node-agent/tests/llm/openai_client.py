"""Drives the agent's OpenAI-compatible API with the unmodified `openai` Python client.

Usage: openai_client.py BASE_URL MODEL
Prints one JSON object with what each call returned; the Rust test asserts on it.
"""
import json
import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
messages = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
out = {"models": [m.id for m in client.models.list().data]}

chat = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
out["chat"] = {
    "object": chat.object,
    "content": chat.choices[0].message.content,
    "role": chat.choices[0].message.role,
    "finish_reason": chat.choices[0].finish_reason,
    "usage": chat.usage.model_dump(),
}

pieces, finish, usage, chunks = [], None, None, 0
stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=24, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    chunks += 1
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
out["chat_stream"] = {"content": "".join(pieces), "pieces": len(pieces), "chunks": chunks,
                      "finish_reason": finish, "usage": usage}

completion = client.completions.create(model=model, prompt="The capital of France is",
                                       max_tokens=8, temperature=0)
out["completion"] = {"text": completion.choices[0].text,
                     "finish_reason": completion.choices[0].finish_reason,
                     "usage": completion.usage.model_dump()}
pieces = [c.choices[0].text for c in client.completions.create(
    model=model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True)
    if c.choices]
out["completion_stream"] = {"text": "".join(pieces), "pieces": len(pieces)}

stopped = client.chat.completions.create(model=model, messages=messages, max_tokens=24,
                                         temperature=0, stop=["Paris"])
out["stopped"] = {"content": stopped.choices[0].message.content,
                  "finish_reason": stopped.choices[0].finish_reason}

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    out["unknown_model"] = "answered"
except openai.NotFoundError as e:
    out["unknown_model"] = {"status": e.status_code, "code": e.code, "message": e.message}

try:
    client.chat.completions.create(model=model, messages=[
        {"role": "user", "content": "word " * 5000}], max_tokens=8)
    out["too_long"] = "answered"
except openai.BadRequestError as e:
    out["too_long"] = {"status": e.status_code, "code": e.code, "message": e.message}

print(json.dumps(out))
