"""Linear-consistency attacks: the encoder's last linear maps W_l (m x n) are public, and
the k real entries of a map are exactly W_l h for one bottleneck vector h (up to the
public quantizer), with every other coordinate of W_l h smaller in magnitude than the
smallest real one. Fakes that do not come from one such h stand out as misfits.

- ``lp_scores``: one linear program per map (HiGHS): the h minimizing the L1 misfit to
  the public values, subject to every publicly-zero coordinate staying below the
  smallest public magnitude; entries that fit best are called real. Slow: bounded by
  ``max_items`` / ``max_maps``.
- ``least_squares_scores``: every public entry is either real (equal to W h) or fake (W h
  there below the smallest real magnitude, as on every publicly-zero coordinate). When
  n < k (the ``small-n64`` preset) k real values in an n-dim column space are a strong
  constraint: a subset one h explains to within quantization error is almost surely the
  real one; with n >= k (``paper``, ``small``) any k values fit exactly and only the
  hinge on the other coordinates is left to tell. From a few starting rankings,
  alternate least-squares fits of h (equalities on the chosen entries, a hinge on all
  others) with re-choosing the k entries that are cheapest to call real; keep per map
  the split of least total cost. Vectorized over items and maps, so it runs on many
  more items than the LP.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import linprog

from imambig.attacks.magnitude import largest_scores
from imambig.attacks.reencode import shared_reencode_scores
from imambig.attacks.registry import AttackContext, Guess, register_attack
from imambig.attacks.scoring import subset
from imambig.mechanism.record import Ambiguated
from imambig.model.autoencoder import SparseAutoencoder


def _weights(model: SparseAutoencoder) -> np.ndarray:
    return model.linear.weight.detach().cpu().double().numpy()  # (L, m, n)


def _misfit(fit: np.ndarray, values: np.ndarray) -> np.ndarray:
    """-|fit - v| in units of the map's median public magnitude (comparable across maps)."""
    v = values.astype(np.float64)
    return -np.abs(fit - v) / (np.median(np.abs(v), axis=-1, keepdims=True) + 1e-12)


# ---------------------------------------------------------------------------
# Linear program
# ---------------------------------------------------------------------------


def lp_fit(w: np.ndarray, public: np.ndarray, values: np.ndarray) -> np.ndarray:
    """h (n,) minimizing sum |W_P h - v| s.t. |W_Z h| <= min |v| (one map).

    ``w`` (m, n) the map's weights, ``public`` (m,) bool mask, ``values`` (k',) in
    position order. Variables [h, s]: s_j >= |(W_P h - v)_j| are the L1 slacks.
    """
    wp, wz = w[public], w[~public]
    kp, n = wp.shape
    tau = float(np.abs(values).min())
    eye = sparse.identity(kp, format="csr")
    zero = sparse.csr_matrix((len(wz), kp))
    a_ub = sparse.vstack(
        [
            sparse.hstack([wp, -eye]),
            sparse.hstack([-wp, -eye]),
            sparse.hstack([wz, zero]),
            sparse.hstack([-wz, zero]),
        ],
        format="csc",
    )
    b_ub = np.concatenate([values, -values, np.full(2 * len(wz), tau)])
    cost = np.concatenate([np.zeros(n), np.ones(kp)])
    bounds = [(None, None)] * n + [(0, None)] * kp
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.x is None:  # h = 0 is always feasible, so this is a solver failure
        raise RuntimeError(f"linear program failed: {res.message}")
    return res.x[:n]


def lp_scores(
    model: SparseAutoencoder,
    amb: Ambiguated,
    max_items: int | None = None,
    max_maps: int | None = None,
) -> np.ndarray:
    """LP misfit scores for the first ``max_items`` items and ``max_maps`` maps:
    shape (min(B, max_items), min(L, max_maps), k')."""
    w = _weights(model)
    B, L, kp = amb.values.shape
    nb, nl = min(B, max_items or B), min(L, max_maps or L)
    values = amb.values.astype(np.float64)
    out = np.empty((nb, nl, kp))
    for b in range(nb):
        for m in range(nl):
            h = lp_fit(w[m], amb.mask[b, m], values[b, m])
            out[b, m] = _misfit(w[m][amb.mask[b, m]] @ h, values[b, m])
    return out


# ---------------------------------------------------------------------------
# Least squares: every public entry is real (fits W h) or fake (stays below tau)
# ---------------------------------------------------------------------------


class _Problems:
    """The (item, map) problems of a chunk of records, flattened to N = items * L rows,
    in the full m-dim code space (publicly-zero coordinates included). The weights stay
    one (L, m, n) tensor indexed by each problem's map, never copied per problem."""

    def __init__(self, w: torch.Tensor, amb: Ambiguated) -> None:
        b, n_maps, kp = amb.values.shape
        m = w.shape[1]
        self.shape = (b, n_maps, kp)
        self.k_public = kp
        self.weights = w
        self.map = torch.arange(n_maps).repeat(b)
        self.public = torch.from_numpy(amb.mask).reshape(-1, m)
        vals = torch.from_numpy(amb.values.astype(np.float64)).reshape(-1, kp).to(w.dtype)
        self.v = torch.zeros(len(vals), m, dtype=w.dtype)
        self.v[self.public] = vals.reshape(-1)
        self.scale = vals.abs().median(-1).values.clamp_min(1e-12)[:, None]
        self.tau = vals.abs().min(-1).values[:, None]

    def select(self, rows: torch.Tensor) -> _Problems:
        """The sub-problems ``rows`` (indices into N)."""
        sub = object.__new__(_Problems)
        sub.shape, sub.k_public, sub.weights = self.shape, self.k_public, self.weights
        for name in ("map", "public", "v", "scale", "tau"):
            setattr(sub, name, getattr(self, name)[rows])
        return sub

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Weight rows (N, a, n) of each problem's map at coordinates ``idx`` (N, a)."""
        return self.weights[self.map[:, None], idx]

    def dense(self, h: torch.Tensor) -> torch.Tensor:
        """W h (N, m) for bottleneck vectors h (N, n), one matrix product per map."""
        out = h.new_empty(len(h), self.weights.shape[1])
        for m in self.map.unique().tolist():
            sel = self.map == m
            out[sel] = h[sel] @ self.weights[m].T
        return out

    def at_public(self, x: torch.Tensor) -> torch.Tensor:
        """(N, m) -> (N, k') values at the public positions."""
        return x[self.public].reshape(-1, self.k_public)

    def to_full(self, x: torch.Tensor) -> torch.Tensor:
        """(N, k') bool -> (N, m), False at publicly-zero coordinates."""
        out = torch.zeros_like(self.public)
        out[self.public] = x.reshape(-1)
        return out

    def top(self, score: torch.Tensor, k: int) -> torch.Tensor:
        """(N, m) bool: the k best of each problem's public entries, scored (N, k')."""
        idx = score.topk(k, dim=-1).indices
        return self.to_full(torch.zeros_like(score, dtype=torch.bool).scatter_(-1, idx, True))


def _solve(p: _Problems, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted least squares h (N, n) per problem; target and weight (N, m). A relative
    ridge keeps problems with few weighted rows solvable.

    Only rows of non-zero weight enter: in the split fit that is the k chosen entries
    plus the few violators, so those rows are gathered first, and with fewer rows a
    than unknowns n the a x a system is solved instead of the n x n one."""
    active = weight != 0
    a = int(active.sum(-1).max())
    idx = active.to(torch.uint8).argsort(dim=-1, descending=True, stable=True)[:, :a]
    w = p.rows(idx)
    root = torch.gather(weight, 1, idx).sqrt()
    x, y = w * root[..., None], (torch.gather(target, 1, idx) * root)[..., None]
    n = w.shape[-1]
    rel = 1e-9 if w.dtype == torch.float64 else 1e-5  # above the dtype's rounding
    ridge = rel * x.square().sum((1, 2)) / n + 1e-30
    if a < n:  # fewer rows than unknowns: the same ridge solution from the a x a system
        kernel = x @ x.transpose(1, 2)
        return (x.transpose(1, 2) @ _ridge_solve(kernel, ridge, y))[..., 0]
    return _ridge_solve(x.transpose(1, 2) @ x, ridge, x.transpose(1, 2) @ y)[..., 0]


def _ridge_solve(a: torch.Tensor, ridge: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a + ridge I)^-1 b, batched. LU, not Cholesky: torch's batched CPU Cholesky is
    several times slower at these sizes."""
    a = a + ridge[:, None, None] * torch.eye(a.shape[-1], dtype=a.dtype)
    return torch.linalg.solve(a, b)


def _robust_fit(p: _Problems, iters: int = 40, power: float = 0.5) -> torch.Tensor:
    """Start: h minimizing sum_P |W_P h - v|^power + hinge(|W_Z h| - tau)^2 by iteratively
    reweighted least squares (an L_p robust fit: a minority of inconsistent entries,
    e.g. independent fakes, does not pull it). Returns misfit ranking (N, k')."""
    weight, target, eps = p.public.to(p.v.dtype), p.v.clone(), 1.0
    for _ in range(iters):
        d = p.dense(_solve(p, target, weight))
        r = (d - p.v) / p.scale
        outside = (d.abs() > p.tau) & ~p.public
        weight = torch.where(p.public, (r.square() + eps**2) ** (power / 2 - 1), outside / eps)
        target = torch.where(p.public, p.v, d.clamp(-p.tau, p.tau))
        eps = max(eps * 0.85, 1e-4)
    return -p.at_public(r.abs())


def _split_fit(
    p: _Problems, start: torch.Tensor, k: int, outer: int, inner: int, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """From the k best entries of ``start``: fit h so the chosen entries equal W h and
    every other coordinate stays below the chosen ones' smallest magnitude (a squared
    hinge, solved by projection), then re-choose the k entries where being real costs
    least against being fake; repeat until the choice stops changing (each problem on
    its own: settled ones are not solved again). Returns (margin (N, k'), total cost
    (N,))."""
    chosen = p.top(start, k)
    cost_real, cost_fake = torch.zeros_like(p.v), torch.zeros_like(p.v)
    margin = torch.zeros_like(start, dtype=p.v.dtype)
    live = torch.arange(len(chosen))
    for _ in range(outer):
        q, ch = p.select(live), chosen[live]
        tau = q.v.abs().masked_fill(~ch, np.inf).min(-1).values[:, None]
        weight, target = ch.to(q.v.dtype), q.v.clone()
        for _ in range(inner):
            d = q.dense(_solve(q, target, weight))
            weight = torch.where(ch, 1.0, lam * ((d.abs() > tau) & ~ch))
            target = torch.where(ch, q.v, d.clamp(-tau, tau))
        cost_real[live] = (d - q.v).abs() / q.scale
        cost_fake[live] = (d.abs() - tau).clamp_min(0) / q.scale
        margin[live] = q.at_public(cost_fake[live] - cost_real[live])
        new = q.top(margin[live], k)
        chosen[live] = new
        live = live[(new != ch).any(-1)]
        if not len(live):
            break
    total = torch.where(chosen, cost_real, cost_fake).sum(-1)
    return margin, total


def least_squares_scores(
    model: SparseAutoencoder,
    amb: Ambiguated,
    k: int,
    starts: dict[str, np.ndarray] | None = None,
    outer: int = 8,
    inner: int = 3,
    lam: float = 0.3,
    chunk_items: int = 8,
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Real-vs-fake margins (B, L, k') of the best split fit per map.

    Starting rankings: a robust L_p fit, its reverse (the robust fit may lock onto a
    coherent set of fakes instead of the real entries), the k largest magnitudes, and
    ``starts`` (B, L, k') given by the caller (e.g. another attack's scores). Each is
    refined by ``_split_fit``; per map the one of least total cost is kept.
    """
    w = torch.from_numpy(_weights(model)).to(dtype)
    out = np.empty(amb.values.shape)
    for s in range(0, len(amb.values), chunk_items):
        part = slice(s, s + chunk_items)
        sub = subset(amb, part)
        p = _Problems(w, sub)
        robust = _robust_fit(p)
        given = [largest_scores(sub), *(np.asarray(x[part]) for x in (starts or {}).values())]
        inits = [robust, -robust,
                 *(torch.from_numpy(x).to(dtype).reshape(robust.shape) for x in given)]
        best_cost = torch.full((len(robust),), np.inf, dtype=dtype)
        best = torch.zeros_like(robust)
        for init in inits:
            margin, cost = _split_fit(p, init, k, outer, inner, lam)
            better = cost < best_cost
            best_cost = torch.where(better, cost, best_cost)
            best = torch.where(better[:, None], margin, best)
        out[part] = best.numpy().reshape(p.shape)
    return out


def _fit_note(ctx: AttackContext) -> str:
    n = ctx.model.config.bottleneck_size
    return "split fit" + ("" if n < ctx.k else f"; n={n} >= k={ctx.k}: any k entries fit exactly")


@register_attack("least_squares")
def least_squares(ctx: AttackContext) -> Guess:
    return Guess("least squares", least_squares_scores(ctx.model, ctx.target, ctx.k),
                 _fit_note(ctx))


@register_attack("least_squares_reencode")
def least_squares_reencode(ctx: AttackContext) -> Guess:
    # Chained: the re-encode guess is one more start (its time counts here only when the
    # re-encode row did not run first).
    starts = {"reencode": shared_reencode_scores(ctx)}
    scores = least_squares_scores(ctx.model, ctx.target, ctx.k, starts=starts)
    return Guess("least squares + re-encode start", scores, _fit_note(ctx))


@register_attack("lp")
def linear_program(ctx: AttackContext) -> Guess:
    scores = lp_scores(ctx.model, ctx.target, ctx.max_items_lp, ctx.max_maps_lp)
    nb, nl = scores.shape[:2]
    return Guess("LP", scores, f"first {nb} items, {nl} of {ctx.target.values.shape[1]} maps")
