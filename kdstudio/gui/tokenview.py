"""A read-only text view of a teacher response coloured by token probability.

Each token's background shows how sure the teacher was (orange below 90 %, red below
50 %, stronger the less sure, clearly visible on light and dark palettes); hovering a token
shows its probability and the teacher's top alternatives. Special tokens a local or vLLM
teacher returns beside the text (`<|end|>`, `</s>`) are not part of the answer: they show
as a muted marker, named on hover.
"""

from __future__ import annotations

import bisect
import codecs
import html
import math
import re

import numpy as np
from PySide6.QtCore import QEvent, QObject
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QTextBrowser, QToolTip

from kdstudio.logprobs import TokenLogprobs

LOW = "#e0413a"  # a token the teacher found unlikely
MID = "#e8a00a"
ERROR = "#d23c3c"
SPECIAL_MARK = "∎"
# How special tokens of the common tokenizer families are spelled.
SPECIAL = re.compile(
    r"<\|[^|<>\s]{1,40}\|>|</?s>|<(?:eos|bos|pad|unk|eot|eom)>|\[(?:/?INST|EOS|BOS)\]"
)


def _show(token: bytes) -> str:
    text = token.decode("utf-8", errors="replace")
    return repr(text)[1:-1] if text.strip() != text or not text else text


def token_texts(tl: TokenLogprobs) -> list[str]:
    """Each token's text; a UTF-8 character split over tokens shows on the token that ends it."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return (
        [decoder.decode(t) for t in tl.tokens[:-1]] + [decoder.decode(tl.tokens[-1], final=True)]
        if tl.tokens
        else []
    )


def special_tokens(texts: list[str], response: str) -> list[bool]:
    """Which tokens are special tokens outside the answer: spelled like one and not where
    the answer's text has them (an answer may well quote "<|end|>")."""
    out, pos = [], 0
    for text in texts:
        if response.startswith(text, pos):
            out.append(False)
            pos += len(text)
        else:
            out.append(bool(SPECIAL.fullmatch(text)))
            if not out[-1]:
                pos += len(text)
    return out


def colour_for(p: float, base: QColor) -> str | None:
    """A background for probability p blended over `base`; None for confident tokens.

    Every shaded token stands out: even at 89 % the orange covers 30 % of the background
    (it used to be 4 %, invisible on a dark palette); below 50 % red from 45 % to 80 %.
    """
    if not math.isfinite(p) or p >= 0.9:
        return None
    if p < 0.5:
        target, alpha = QColor(LOW), 0.45 + 0.35 * (0.5 - max(p, 0.0)) / 0.5
    else:
        target, alpha = QColor(MID), 0.30 + 0.25 * (0.9 - p) / 0.4
    mix = [
        round(a * alpha + b * (1 - alpha))
        for a, b in zip(target.getRgb()[:3], base.getRgb()[:3], strict=True)
    ]
    return QColor(*mix).name()


class TokenView(QTextBrowser):
    """Shows plain text, or tokens coloured by probability with alternatives on hover."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setOpenLinks(False)
        self.viewport().setMouseTracking(True)
        self.viewport().installEventFilter(self)
        self.tl: TokenLogprobs | None = None
        self._response = ""
        self._starts: list[int] = []

    def show_text(self, text: str) -> None:
        self.tl, self._starts = None, []
        self.setPlainText(text)

    def show_error(self, text: str) -> None:
        """What went wrong instead of an answer: in the error colour, never as an answer."""
        self.tl, self._starts = None, []
        self.setHtml(f'<div style="color:{ERROR}; white-space: pre-wrap">{html.escape(text)}</div>')

    def show_tokens(self, tl: TokenLogprobs, response: str = "") -> None:
        """Render the tokens of `response`; remembers where each starts for the hover
        lookup. Special tokens outside the answer show as a muted marker."""
        self.tl, self._response = tl, response
        base = self.palette().color(QPalette.ColorRole.Base)
        muted = self.palette().color(QPalette.ColorRole.PlaceholderText).name()
        parts, starts, pos = [], [], 0
        probs = np.exp(tl.logprobs.astype(np.float64))
        texts = token_texts(tl)
        for text, p, special in zip(texts, probs, special_tokens(texts, response), strict=True):
            starts.append(pos)
            if special:
                pos += len(SPECIAL_MARK)
                parts.append(f'<span style="color:{muted}">{SPECIAL_MARK}</span>')
                continue
            pos += len(text)
            escaped = html.escape(text).replace("\n", "<br>")
            colour = colour_for(float(p), base)
            parts.append(
                f'<span style="background-color:{colour}">{escaped}</span>' if colour else escaped
            )
        self._starts = starts
        self.setHtml(f'<div style="white-space: pre-wrap">{"".join(parts)}</div>')

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 - Qt's name
        """Light <-> dark: shade again against the new background."""
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange and getattr(self, "tl", None) is not None:
            self.show_tokens(self.tl, self._response)

    def token_at(self, char_pos: int) -> int | None:
        if not self._starts:
            return None
        i = bisect.bisect_right(self._starts, char_pos) - 1
        return i if 0 <= i < len(self._starts) else None

    def tooltip_for(self, i: int) -> str:
        tl = self.tl
        assert tl is not None
        p = math.exp(float(tl.logprobs[i])) if math.isfinite(float(tl.logprobs[i])) else 0.0
        rows = [f"<b>{html.escape(_show(tl.tokens[i]))}</b> &nbsp; p = {p:.3f}"]
        if SPECIAL.fullmatch(_show(tl.tokens[i])):
            rows.append("a special token (not part of the answer's text)")
        if tl.k:
            alts = []
            for j, token in enumerate(tl.top_tokens[i]):
                lp = float(tl.top_logprobs[i, j])
                if not math.isfinite(lp):
                    continue
                label = (
                    _show(token)
                    if token
                    else f"id {int(tl.top_ids[i, j]) if tl.top_ids is not None else '?'}"
                )
                alts.append(
                    f"<tr><td>{html.escape(label)}</td><td align=right>{math.exp(lp):.3f}</td></tr>"
                )
            if alts:
                rows.append(
                    "top alternatives:<table cellspacing=0 cellpadding=1>"
                    + "".join(alts[:10])
                    + "</table>"
                )
        return "<br>".join(rows)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if obj is self.viewport() and event.type() == QEvent.Type.MouseMove and self.tl is not None:
            cursor = self.cursorForPosition(event.position().toPoint())
            i = self.token_at(cursor.position())
            if i is not None:
                QToolTip.showText(
                    event.globalPosition().toPoint(), self.tooltip_for(i), self.viewport()
                )
            else:
                QToolTip.hideText()
        return super().eventFilter(obj, event)
