"""A conversation about the same page(s): `ask -i` keeps the previous turns in the prompt.

The Qwen2-VL-Instruct chat template writes a conversation as

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{images}{q1}<|im_end|>\\n<|im_start|>assistant\\n{a1}<|im_end|>\\n
    <|im_start|>user\\n{q2}<|im_end|>\\n<|im_start|>assistant\\n

The generator builds the first user turn around one "question" text, so a follow-up is
that text with the earlier turns folded in (`Conversation.prompt`): the tokens are then
exactly the template's (tests/test_chat.py checks it against the checkpoint's own
template), the images stay in the first turn, and the page prefix up to the first
question is the same for every turn (the prefix cache serves it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TURN_END = "<|im_end|>\n"
ASSISTANT = "<|im_start|>assistant\n"
USER = "<|im_start|>user\n"
MAX_TURNS = 8  # earlier exchanges kept in the prompt; older ones are dropped first (the prompt stays bounded)


@dataclass
class Conversation:
    turns: list[tuple[str, str]] = field(default_factory=list)  # (question, answer), oldest first
    max_turns: int = MAX_TURNS

    def prompt(self, question: str) -> str:
        """The text to pass as the generator's question so the prompt holds the whole conversation."""
        text = ""
        for q, a in self.turns[-self.max_turns :]:
            text += q + TURN_END + ASSISTANT + a + TURN_END + USER
        return text + question

    def add(self, question: str, answer: str) -> None:
        self.turns.append((question, answer.strip()))

    def reset(self) -> None:
        self.turns.clear()
