"""Self-revision: the prompt that asks a model to improve a draft (SRPO trains on it), and revising at inference."""

from __future__ import annotations

from selfalign.records import Message, PromptRecord

REVISION_INSTRUCTION = ("Here is a draft answer to the request above:\n\n{draft}\n\nWrite an improved answer to the "
                        "request. Reply with the improved answer only.")


def revision_messages(prompt: list[Message], draft: str) -> list[Message]:
    """The original conversation, then a user turn that quotes the draft and asks for a better answer."""
    return list(prompt) + [Message(role="user", content=REVISION_INSTRUCTION.format(draft=draft))]


def self_revise(engine, prompts: list[PromptRecord], settings, rounds: int = 1) -> list[list[str]]:
    """Generate an answer per prompt, then revise it `rounds` times; returns each prompt's drafts, first to last."""
    from selfalign.generation import prompt_ids

    ids = prompt_ids(prompts)
    one = settings.model_copy(update={"n": 1})
    drafts = [[s.text] for s in engine.generate(prompts, one)]
    for _ in range(rounds):
        revise = [PromptRecord(id=pid, messages=revision_messages(p.messages, d[-1]))
                  for pid, p, d in zip(ids, prompts, drafts)]
        for history, sample in zip(drafts, engine.generate(revise, one)):
            history.append(sample.text)
    return drafts
