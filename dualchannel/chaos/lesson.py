"""A scripted lesson transcript: what the demo and the chaos runs send.

:func:`lesson_segments` returns the segments of message ``seq`` (1, 2, 3 …): a short
lesson on the Fibonacci numbers, mixing ``text``, ``math`` and ``code`` segments the way
a tutoring agent's transcript does. The script loops when a run outlasts it, so every
seq has content and the same seq always has the same content.
"""

from __future__ import annotations

from typing import Literal, TypedDict

__all__ = ["LESSON", "LessonSegment", "lesson_segments"]


class LessonSegment(TypedDict):
    type: Literal["text", "math", "code"]
    content: str


def _t(content: str) -> LessonSegment:
    return {"type": "text", "content": content}


def _m(content: str) -> LessonSegment:
    return {"type": "math", "content": content}


def _c(content: str) -> LessonSegment:
    return {"type": "code", "content": content}


#: One message per entry; each entry is that message's segments.
LESSON: tuple[tuple[LessonSegment, ...], ...] = (
    (_t("Good evening! Today we meet the Fibonacci numbers."),),
    (_t("Each number is the sum of the two before it."),),
    (_m(r"F_0 = 0,\quad F_1 = 1"),),
    (_m(r"F_n = F_{n-1} + F_{n-2} \quad (n \ge 2)"),),
    (_t("So the sequence starts"), _m("0, 1, 1, 2, 3, 5, 8, 13, 21, 34")),
    (_t("Let's write it down in Python, the obvious way first."),),
    (_c("def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)"),),
    (_t("This works, but it is slow. How slow?"),),
    (_m(r"T(n) = T(n-1) + T(n-2) + O(1) \in O(\varphi^n)"),),
    (_t("where phi is the golden ratio:"), _m(r"\varphi = \frac{1 + \sqrt{5}}{2} \approx 1.618")),
    (_t("The same values are computed again and again."),),
    (_t("We can remember them instead."),),
    (
        _c(
            "from functools import cache\n\n@cache\ndef fib(n):\n"
            "    return n if n < 2 else fib(n - 1) + fib(n - 2)"
        ),
    ),
    (_t("Now every value is computed once: linear time."),),
    (_t("Or we keep just the last two numbers:"),),
    (
        _c(
            "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n"
            "        a, b = b, a + b\n    return a"
        ),
    ),
    (_t("Constant memory, linear time. Let's check it."),),
    (_c(">>> [fib(n) for n in range(10)]\n[0, 1, 1, 2, 3, 5, 8, 13, 21, 34]"),),
    (_t("There is also a closed form, Binet's formula:"),),
    (_m(r"F_n = \frac{\varphi^n - \psi^n}{\sqrt{5}},\quad \psi = \frac{1 - \sqrt{5}}{2}"),),
    (_t("Since |psi| < 1, the second term shrinks fast,"),),
    (_m(r"F_n = \operatorname{round}\!\left(\varphi^n / \sqrt{5}\right)"),),
    (_t("but floating point breaks this near n = 71."),),
    (_t("The matrix form gives logarithmic time:"),),
    (
        _m(
            r"\begin{pmatrix}1 & 1\\ 1 & 0\end{pmatrix}^n"
            r" = \begin{pmatrix}F_{n+1} & F_n\\ F_n & F_{n-1}\end{pmatrix}"
        ),
    ),
    (_t("Squaring the matrix halves the work each step."),),
    (
        _c(
            "def fib(n):\n"
            "    def go(k):\n"
            "        if k == 0:\n"
            "            return 0, 1\n"
            "        a, b = go(k // 2)\n"
            "        c = a * (2 * b - a)\n"
            "        d = a * a + b * b\n"
            "        return (d, c + d) if k % 2 else (c, d)\n"
            "    return go(n)[0]"
        ),
    ),
    (_t("These are the fast-doubling identities:"),),
    (_m(r"F_{2k} = F_k\,(2F_{k+1} - F_k),\quad F_{2k+1} = F_k^2 + F_{k+1}^2"),),
    (_t("Try fib(1000): it returns instantly."),),
    (_t("A nice fact to finish: consecutive ratios approach phi."),),
    (_m(r"\lim_{n\to\infty} \frac{F_{n+1}}{F_n} = \varphi"),),
    (_t("Homework: prove that gcd(F_m, F_n) = F_gcd(m, n)."),),
    (_m(r"\gcd(F_m, F_n) = F_{\gcd(m,n)}"),),
    (_t("Questions? Let's go through one together."),),
)


def lesson_segments(seq: int) -> list[LessonSegment]:
    """The segments of message ``seq`` (from 1), looping over :data:`LESSON`."""
    if seq < 1:
        raise ValueError("seq counts from 1")
    return list(LESSON[(seq - 1) % len(LESSON)])
