"""The official `openai` Python client against a running guardreasoner server.

Run by tests/openai_client.rs with the address and key; exits non-zero, saying why, when an
answer does not parse into the client's own types or lacks what they promise.
"""

import sys

import openai

base_url, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)

moderation = client.moderations.create(model="omni-moderation-latest", input="How do I bake bread?")
assert moderation.id.startswith("modr-"), moderation.id
assert moderation.model, moderation
result = moderation.results[0]
assert isinstance(result.flagged, bool), result
assert result.categories.harassment is False, result.categories
assert result.categories.self_harm_instructions is False, result.categories
assert result.category_scores.violence_graphic == 0.0, result.category_scores
assert result.category_applied_input_types.sexual_minors == ["text"], result
# GuardReasoner's own answers ride along in the extra field.
extra = result.model_extra["guardreasoner"]
assert set(extra["labels"]) == {"request", "completion", "response"}, extra

several = client.moderations.create(input=["one", "two"])
assert len(several.results) == 2, several

chat = client.chat.completions.create(
    model="anything",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
    max_tokens=8,
)
assert chat.object == "chat.completion", chat
assert chat.choices[0].message.role == "assistant", chat
assert chat.choices[0].finish_reason in ("stop", "length"), chat
assert chat.usage.completion_tokens <= 8 and chat.usage.prompt_tokens > 0, chat.usage

pieces = []
finish = None
for chunk in client.chat.completions.create(
    model="anything",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
    max_tokens=8,
    stream=True,
):
    assert chunk.object == "chat.completion.chunk", chunk
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
assert "".join(pieces) == chat.choices[0].message.content, (pieces, chat)
assert finish == chat.choices[0].finish_reason, finish

completion = client.completions.create(model="anything", prompt="1, 2, 3,", max_tokens=6)
assert completion.object == "text_completion", completion
assert completion.choices[0].text, completion

try:
    client.chat.completions.create(model="x", messages=[{"role": "user", "content": "x"}], max_tokens=10**6)
except openai.UnprocessableEntityError as error:
    assert error.body["param"] == "max_tokens", error.body
else:
    raise AssertionError("max_tokens over the limit was accepted")

try:
    openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
except openai.AuthenticationError:
    pass
else:
    raise AssertionError("a wrong key was accepted")

models = client.models.list()
assert [m.id for m in models.data], models
print("ok", openai.__version__)
