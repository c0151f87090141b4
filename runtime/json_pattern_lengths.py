"""How long a pattern's match can still get: `minLength` / `maxLength` beside a `pattern`.

pydantic writes both for `constr(pattern=..., max_length=...)` and for `HttpUrl` (a `uri`
format, which JSON mode follows as a pattern, with maxLength 2083). json_constraint.py
counts the characters of such a string and takes a character only while `fits` says some
completion of the match lands within the bounds, so a string is never typed into a dead
end (`^[a-z]+@[a-z]+$` under maxLength 6: after "abcd" an "e" is refused, since "@" and a
letter must still follow).

The NFA's states (json_pattern.Pattern: chars[s] takes one character to s + 1, eps[s] none)
give each state the fewest and the most characters that reach the accept state; the most
is unbounded where a loop that takes a character lies on the way.
"""
from __future__ import annotations

from collections import deque

UNBOUNDED = float("inf")


class PatternLengths:
    def __init__(self, pattern):
        self.pattern = pattern
        edges = [[(s + 1, 1)] if chars else [] for s, chars in enumerate(pattern.chars)]
        for s, targets in enumerate(pattern.eps):
            edges[s] += [(t, 0) for t in targets]
        self.edges = [[(t, c) for t, c in out if t in pattern.live] for out in edges]
        self.fewest = self._fewest()
        self.most = self._most()
        self._memo: dict = {}
        self._fewest_sets: dict = {}               # state set -> fewest_of
        self._next: dict = {}                      # state set -> the states one character on

    def _fewest(self) -> dict[int, int]:
        """A 0-1 BFS backwards from the accept state: a character costs one, epsilon none."""
        back: dict[int, list[tuple[int, int]]] = {}
        for s in self.pattern.live:
            for t, cost in self.edges[s]:
                back.setdefault(t, []).append((s, cost))
        accept = self.pattern.accept
        dist, todo = {accept: 0}, deque([accept])
        while todo:
            t = todo.popleft()
            for s, cost in back.get(t, ()):
                if dist[t] + cost < dist.get(s, UNBOUNDED):
                    dist[s] = dist[t] + cost
                    (todo.appendleft if cost == 0 else todo.append)(s)
        return dist

    def _most(self) -> dict[int, float]:
        """The longest path to accept per state, over the strongly connected components
        (Tarjan, iterative): a component with a character edge inside loops forever."""
        live = sorted(self.pattern.live)
        index, low, on_stack, stack, comp = {}, {}, set(), [], {}
        components: list[list[int]] = []
        for root in live:
            if root in index:
                continue
            work = [(root, 0)]
            while work:
                s, i = work.pop()
                if i == 0:
                    index[s] = low[s] = len(index)
                    stack.append(s)
                    on_stack.add(s)
                out = self.edges[s]
                if i < len(out):
                    work.append((s, i + 1))
                    t = out[i][0]
                    if t not in index:
                        work.append((t, 0))
                    elif t in on_stack:
                        low[s] = min(low[s], index[t])
                    continue
                for t, _ in out:                    # children done: take their lows
                    if t in on_stack:
                        low[s] = min(low[s], low[t])
                if low[s] == index[s]:
                    members = []
                    while True:
                        t = stack.pop()
                        on_stack.discard(t)
                        comp[t] = len(components)
                        members.append(t)
                        if t == s:
                            break
                    components.append(members)
        # Tarjan emits a component after every component it reaches: a ready order.
        longest: list[float] = []
        for k, members in enumerate(components):
            best = 0 if self.pattern.accept in members else -UNBOUNDED
            for s in members:
                for t, cost in self.edges[s]:
                    if comp[t] == k:
                        if cost:
                            best = UNBOUNDED        # a loop that takes characters
                    else:
                        best = max(best, cost + longest[comp[t]])
            longest.append(best)
        return {s: longest[comp[s]] for s in live}

    def fewest_of(self, states: frozenset) -> int:
        """The fewest characters that complete the match (0: it is complete). Memoized: a
        mask asks it at every token's end, and the sets are few but large (a uri's hold
        ~150 states: HttpUrl's maxLength 2083 cost 50-225 ms a mask before)."""
        hit = self._fewest_sets.get(states)
        if hit is None:
            if len(self._fewest_sets) > 1 << 16:
                self._fewest_sets.clear()
            hit = self._fewest_sets[states] = min(self.fewest[s] for s in states)
        return hit

    def fits(self, states: frozenset, least: int, most: int | None) -> bool:
        """Whether some completion of the match from `states` has between least and most
        characters (most None: no upper bound)."""
        least = max(least, 0)
        fewest = self.fewest_of(states)
        if most is not None and fewest > most:
            return False
        if least <= fewest:
            return True
        if max(self.most[s] for s in states) < least:
            return False
        if most is None:
            return True                             # a path at least that long exists
        # Both bounds, and lengths may have gaps (^(aaa)+$ has 3, 6, ...): a completion of
        # least to most characters is, `least` characters in, at an NFA state at most
        # most - least characters from the end. Those states are walked over the NFA's
        # states, not its state sets (any string will do: no subsets to follow), and not
        # by recursion: minLength 1000 beside `^[a-z]+$` is pydantic's constr of an essay.
        key = (states, least, most)
        hit = self._memo.get(key)
        if hit is None:
            reach = self._reach(states, least)
            hit = bool(reach) and self.fewest_of(reach) <= most - least
            if len(self._memo) > 1 << 16:
                self._memo.clear()
            self._memo[key] = hit
        return hit

    def _reach(self, states: frozenset, k: int) -> frozenset:
        """The NFA states some string of exactly k characters leads to from `states`. Each
        set follows from the one before, so once a set comes back they repeat with that
        period: k is reached by skipping the whole periods."""
        chars, close = self.pattern.chars, self.pattern._close
        seen: dict[frozenset, int] = {}
        sets: list[frozenset] = []
        while len(sets) < k and states:
            if states in seen:
                first = seen[states]
                return sets[first + (k - first) % (len(sets) - first)]
            seen[states] = len(sets)
            sets.append(states)
            states = self._next.get(states)
            if states is None:
                # large: ^(a{97}|b{89})+$ steps ~8,600 sets before they repeat, and each
                # character typed under minLength 100000 walks them again (46 s for 97
                # characters when they did not fit, 0.3 s now)
                if len(self._next) > 1 << 14:
                    self._next.clear()
                states = self._next[sets[-1]] = close({s + 1 for s in sets[-1] if chars[s]})
        return states
