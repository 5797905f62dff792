"""Supervised dictionary learning with covariates and a low-rank coefficient matrix, by
alternating projected gradient.

Formulation. Each of ``N`` samples is a signal ``y_i ∈ R^d`` with a vector of covariates
``c_i ∈ R^q`` observed alongside it (the supervision: a multi-output response). Both are explained
by one sparse code ``z_i ∈ R^k``: the signal through a dictionary ``D`` of ``k`` atoms, the
covariates through a linear map ``W`` of rank at most ``r``::

    y_i ≈ D z_i,   c_i ≈ W z_i,   ‖z_i‖₀ ≤ s,   ‖D_j‖₂ ≤ 1,   rank(W) ≤ r.

The estimate minimises, with ``Y = [y_i]`` ``(d, N)``, ``C = [c_i]`` ``(q, N)``, ``Z = [z_i]`` ``(k, N)``,

    F(D, W, Z) = 1/(2N) (‖Y − D Z‖²_F + β ‖C − W Z‖²_F)

over ``D ∈ 𝒟 = {‖D_j‖₂ ≤ 1 for every atom}``, ``W ∈ {rank ≤ r}`` and ``Z`` with ``s``-sparse
columns. This is the joint reconstruction + linear-model objective of supervised dictionary
learning (Mairal, Bach, Ponce, Sapiro & Zisserman, "Supervised Dictionary Learning", NIPS 2008;
Mairal, Bach & Ponce, "Task-Driven Dictionary Learning", IEEE TPAMI 2012, whose linear model
on the codes is here a multi-output regression) with the code-to-covariate map constrained to
low rank as in reduced-rank regression (Izenman, J. Multivariate Analysis 1975). The ``ℓ0``
constraint on the codes (instead of the papers' ``ℓ1`` penalty) makes every block update a
projection, as in iterative hard thresholding (Blumensath & Davies 2009).

Algorithm (our choice, not the papers' solvers): alternating projected gradient, one block at
a time (Gauss–Seidel), each with step ``step/L`` for the block's exact Lipschitz constant::

    Z ← H_s(Z − ∇_Z F / L_Z),        L_Z = ‖DᵀD + β WᵀW‖₂ / N
    D ← P_𝒟(D − ∇_D F / L_D),        L_D = ‖ZZᵀ‖₂ / N
    W ← P_rank≤r(W − ∇_W F / L_W),   L_W = β ‖ZZᵀ‖₂ / N

with ``H_s`` keeping the ``s`` largest entries of each code, ``P_𝒟`` scaling atoms longer than one
back to the unit sphere (the core's :func:`~unroll.prox.functional.project_l2_ball` per atom)
and ``P_rank≤r`` the truncated SVD (the core's :func:`~unroll.prox.functional.project_rank`).
Each block update does not increase ``F`` (a projected gradient step with step ``≤ 1/L`` on a
block whose other blocks are fixed, onto a set it projects onto exactly), so ``F`` decreases
monotonically. Non-convex: the result depends on the start; by default ``D`` starts from ``k``
normalised signals of the data (as common dictionary-learning codes do), ``W`` and ``Z`` at zero.
From such a start the joint sweeps alone mostly fail (fitting ``W`` to the first, wrong codes
locks them in); ``warmup`` sweeps of unsupervised learning first (``β = 0``, codes restarted from
zero each sweep), as Mairal et al. (2012) initialise with unsupervised dictionary learning,
recover most problems (BENCHMARKS.md). From a start near the truth the sweeps recover it.

Ambiguities: ``(D_j c, z_{j·}/c, W_{·j}/c)`` for ``0 < c ≤ 1`` and permutations/signs of the
atoms give the same fit; :func:`dictionary_errors` matches atoms by the Hungarian algorithm on
``|D̂ᵀD|`` after normalising them, and compares ``W`` after the same permutation, signs and scales.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .batched import batch_norm, safe_ratio
from .checks import check_finite, check_tol
from .info import SolverInfo
from .problem import Problem
from .prox.functional import project_l2_ball, project_rank
from .steps import Step
from .unrolled import Unrolled

__all__ = ["DictionaryState", "SupervisedDictionaryProblem", "AlternatingDictionaryStep",
           "supervised_dictionary_learning", "project_sparse", "project_atoms", "dictionary_errors",
           "sparse_code", "make_dictionary_problem"]


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def project_sparse(z: Tensor, sparsity: int) -> Tensor:
    """Keep the ``sparsity`` largest-magnitude entries of each code (dim ``-2`` of ``(B, k, N)``),
    zero the rest: the projection onto ``s``-sparse columns (ties broken by ``topk``)."""
    s = _check_count("sparsity", sparsity, 0)
    k = z.shape[-2]
    if s >= k:
        return z
    if s == 0:
        return torch.zeros_like(z)
    idx = z.abs().topk(s, dim=-2).indices
    return torch.zeros_like(z).scatter(-2, idx, z.gather(-2, idx))


def project_atoms(D: Tensor) -> Tensor:
    """Every atom (column of ``(B, d, k)``) into the unit ℓ2 ball: the core's ``project_l2_ball``
    applied to each atom as one sample."""
    B, d, k = D.shape
    atoms = D.transpose(1, 2).reshape(B * k, d)
    return project_l2_ball(atoms, 1.0).reshape(B, k, d).transpose(1, 2)


class DictionaryState(NamedTuple):
    """Dictionary ``D`` ``(B, d, k)``, covariate map ``W`` ``(B, q, k)`` and codes ``Z`` ``(B, k, N)``."""

    D: Tensor
    W: Tensor
    Z: Tensor


class SupervisedDictionaryProblem(Problem):
    """``F(D, W, Z) = 1/(2N)(‖Y − DZ‖² + β‖C − WZ‖²)`` for a batch of independent problems.

    Args:
        Y: ``(B, d, N)`` signals (columns); C: ``(B, q, N)`` covariates.
        beta: weight ``β ≥ 0`` of the covariates' fit.
        check: validate shapes and finiteness.
    """

    def __init__(self, Y: Tensor, C: Tensor, beta: float = 1.0, check: bool = True) -> None:
        for name, t in (("Y", Y), ("C", C)):
            if not isinstance(t, Tensor) or t.dim() != 3 or not t.is_floating_point():
                got = f"shape {tuple(t.shape)}, {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name}: expected a real floating (B, rows, N) tensor (one sample per column), "
                                 f"got {got}")
        if C.shape[0] != Y.shape[0] or C.shape[2] != Y.shape[2]:
            raise ValueError(f"C: expected (B, q, N) = ({Y.shape[0]}, q, {Y.shape[2]}) to match Y {tuple(Y.shape)}, "
                             f"got {tuple(C.shape)}")
        if C.dtype != Y.dtype:
            raise TypeError(f"C: expected the dtype of Y ({Y.dtype}), got {C.dtype}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (0 <= beta < float("inf")):
            raise ValueError(f"beta: expected a finite number >= 0, got {beta!r}")
        if check:
            check_finite(Y, "Y")
            check_finite(C, "C")
        object.__setattr__(self, "Y", Y)
        object.__setattr__(self, "C", C)
        object.__setattr__(self, "beta", float(beta))

    def __setattr__(self, name, value):
        raise AttributeError(f"SupervisedDictionaryProblem is read-only: build a new one instead of setting {name!r}")

    @property
    def batch_size(self) -> int:
        return self.Y.shape[0]

    @property
    def num_samples(self) -> int:
        return self.Y.shape[2]

    def _like(self) -> Tensor:
        return self.Y

    def inputs_finite(self) -> Tensor:
        return torch.isfinite(self.Y).all() & torch.isfinite(self.C).all()

    def check_inputs_finite(self) -> None:
        check_finite(self.Y, "Y")
        check_finite(self.C, "C")

    def objective(self, state: DictionaryState) -> Tensor:
        """``F`` per problem ``(B,)``."""
        D, W, Z = state
        ry = (D @ Z - self.Y).square().flatten(1).sum(1)
        rc = (W @ Z - self.C).square().flatten(1).sum(1)
        return (ry + self.beta * rc) / (2 * self.num_samples)

    smooth = objective


def _spectral(M: Tensor) -> Tensor:
    """``‖M‖₂`` of each ``(B, k, k)`` symmetric PSD matrix, as ``(B, 1, 1)`` (floored at a tiny
    positive value so a zero block takes no step instead of dividing by zero)."""
    s = torch.linalg.eigvalsh(M)[:, -1]
    return s.clamp_min(torch.finfo(M.dtype).tiny)[:, None, None]


class AlternatingDictionaryStep(Step):
    """One sweep of alternating projected gradient over ``Z``, ``D``, ``W`` (module notes).

    Args:
        rank: ``r``, the largest rank of ``W`` (an int ≥ 0).
        sparsity: ``s``, the nonzeros per code (an int ≥ 1).
        step: step sizes in units of each block's ``1/L`` (``≤ 1`` keeps ``F`` monotone).
        inner_steps: projected-gradient steps per block per sweep.
        restart_codes: start each sweep's code steps from zero instead of the previous codes
            (then ``F`` need not decrease from sweep to sweep: a restart forgets the codes).

    State :class:`DictionaryState`; estimate ``D``; residual: relative change of all three blocks.
    """

    def __init__(self, rank: int, sparsity: int, step: float = 1.0, inner_steps: int = 1,
                 restart_codes: bool = False) -> None:
        super().__init__()
        self.inner_steps = _check_count("inner_steps", inner_steps, 1)
        self.restart_codes = bool(restart_codes)
        self.rank = _check_count("rank", rank, 0)
        self.sparsity = _check_count("sparsity", sparsity, 1)
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not (0 < step < float("inf")):
            raise ValueError(f"step: expected a finite number > 0, got {step!r}")
        self.step = float(step)

    def estimate(self, state: DictionaryState) -> Tensor:
        return state.D

    def forward(self, state: DictionaryState, problem: SupervisedDictionaryProblem) -> DictionaryState:
        D, W, Z = state
        Y, C, beta, N = problem.Y, problem.C, problem.beta, problem.num_samples
        Dt, Wt = D.transpose(1, 2), W.transpose(1, 2)
        gram = Dt @ D + beta * (Wt @ W)
        rhs = Dt @ Y + beta * (Wt @ C)
        alpha = self.step / _spectral(gram)
        if self.restart_codes:
            Z = torch.zeros_like(Z)
        for _ in range(self.inner_steps):
            Z = project_sparse(Z - alpha * (gram @ Z - rhs), self.sparsity)
        Zt = Z.transpose(1, 2)
        zz = Z @ Zt
        lz = _spectral(zz) / N
        yz, cz = Y @ Zt, C @ Zt
        for _ in range(self.inner_steps):
            D = project_atoms(D - (self.step / lz) * ((D @ zz - yz) / N))
        if beta > 0:
            for _ in range(self.inner_steps):
                W = project_rank(W - (self.step / (beta * lz)) * (beta * (W @ zz - cz) / N), self.rank)
        return DictionaryState(D, W, Z)

    def residual(self, new: DictionaryState, old: DictionaryState, problem: Problem) -> Tensor:
        num = sum(batch_norm(a - b).square() for a, b in zip(new, old)).sqrt()
        den = sum(batch_norm(b).square() for b in old).sqrt()
        return safe_ratio(num, den)


def supervised_dictionary_learning(Y: Tensor, C: Tensor, num_atoms: int, rank: int, sparsity: int,
                                   beta: float = 1.0, max_iter: int = 2000, tol: Optional[float] = 1e-9,
                                   D0: Optional[Tensor] = None, step: float = 1.0, record_objective: bool = False,
                                   generator: Optional[torch.Generator] = None, warmup: int = 0,
                                   warmup_inner_steps: int = 10
                                   ) -> Tuple[Tensor, Tensor, Tensor, SolverInfo]:
    """Alternating projected gradient for the problem of the module notes.

    Args:
        Y: ``(B, d, N)`` signals; C: ``(B, q, N)`` covariates (``B`` independent problems).
        num_atoms: ``k``; rank: ``r`` (``W``'s largest rank); sparsity: ``s`` (nonzeros per code).
        beta: weight of the covariates' fit.
        max_iter, tol: sweep budget; stop a problem when the relative change of ``(D, W, Z)`` is
            ``≤ tol`` (``None``: run ``max_iter``).
        D0: ``(B, d, k)`` initial dictionary (projected onto unit-ball atoms); default ``k``
            distinct signals of each problem drawn with ``generator``, normalised.
        step: step sizes in units of each block's ``1/L``.
        record_objective: ``F`` after every sweep in ``info.objective`` ``(B, K)``.
        generator: draws the default start.
        warmup: sweeps of unsupervised dictionary learning (``β = 0``: the covariates ignored)
            before the joint problem, as Mairal et al. (2012) initialise task-driven learning by
            unsupervised learning. In those sweeps the codes restart from zero and take
            ``warmup_inner_steps`` projected-gradient (hard-thresholding) steps, the atoms as many;
            from a random data start this is what finds the atoms (BENCHMARKS.md: without it,
            fitting ``W`` to early wrong codes locks them in).

    Returns:
        ``(D, W, Z, info)``: ``(B, d, k)``, ``(B, q, k)`` of rank ``≤ r``, ``(B, k, N)``, and a
        :class:`~unroll.info.SolverInfo` (``method = "supervised_dictionary_learning"``).
    """
    problem = SupervisedDictionaryProblem(Y, C, beta)
    k = _check_count("num_atoms", num_atoms, 1)
    layer_step = AlternatingDictionaryStep(rank, sparsity, step)
    max_iter = _check_count("max_iter", max_iter, 1)
    tol = check_tol(tol, "tol")
    B, d, N = Y.shape
    q = C.shape[1]
    if D0 is None:
        if k > N:
            raise ValueError(f"num_atoms: the default start takes k distinct signals, expected k <= N = {N}, got {k}")
        cols = torch.stack([torch.randperm(N, generator=generator)[:k] for _ in range(B)]).to(Y.device)
        D0 = Y.gather(2, cols[:, None, :].expand(B, d, k))
        D0 = D0 / batch_norm_cols(D0).clamp_min(torch.finfo(Y.dtype).tiny)
    elif not isinstance(D0, Tensor) or tuple(D0.shape) != (B, d, k):
        got = tuple(D0.shape) if isinstance(D0, Tensor) else type(D0).__name__
        raise ValueError(f"D0: expected shape (B, d, k) = {(B, d, k)}, got {got}")
    state0 = DictionaryState(project_atoms(D0.to(Y.dtype)), Y.new_zeros(B, q, k), Y.new_zeros(B, k, N))
    warmup = _check_count("warmup", warmup, 0)
    if warmup:
        plain = SupervisedDictionaryProblem(Y, C, 0.0, check=False)
        warm = AlternatingDictionaryStep(rank, sparsity, step, inner_steps=warmup_inner_steps, restart_codes=True)
        D_w, _, Z_w = Unrolled(warm, num_iters=warmup)(plain, state0=state0, tol=tol).state
        state0 = DictionaryState(D_w, state0.W, Z_w)
    out = Unrolled(layer_step, num_iters=max_iter)(problem, state0=state0, tol=tol, return_states=record_objective)
    info = out.info
    info.method = "supervised_dictionary_learning"
    if record_objective:
        info.objective = torch.stack([problem.objective(s) for s in out.states], dim=1)
    D, W, Z = out.state
    return D, W, Z, info


def batch_norm_cols(D: Tensor) -> Tensor:
    """Column norms of ``(B, d, k)`` as ``(B, 1, k)``."""
    return torch.linalg.vector_norm(D, dim=1, keepdim=True)


def sparse_code(Y: Tensor, D: Tensor, sparsity: int, iters: int = 300) -> Tensor:
    """Codes of new signals with a learned dictionary, by iterative hard thresholding
    (Blumensath & Davies 2009) on ``½‖Y − DZ‖²`` with ``s``-sparse columns, step ``1/‖D‖₂²``:
    ``(B, d, N), (B, d, k) → (B, k, N)``."""
    _check_count("sparsity", sparsity, 1)
    Dt = D.transpose(1, 2)
    gram = Dt @ D
    alpha = 1.0 / _spectral(gram)
    DtY = Dt @ Y
    Z = project_sparse(alpha * DtY, sparsity)
    for _ in range(iters):
        Z = project_sparse(Z - alpha * (gram @ Z - DtY), sparsity)
    return Z


def dictionary_errors(D_hat: Tensor, W_hat: Tensor, D: Tensor, W: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Recovery errors up to the model's ambiguities, per problem ``(B,)`` each:

    * ``atom_err``: ``max_j (1 − |⟨d̂_π(j), d_j⟩|)`` after normalising the atoms and matching them
      (permutation ``π`` by the Hungarian algorithm on ``|D̂ᵀD|``, SciPy's
      ``linear_sum_assignment``);
    * ``D_err``: ``‖D̂ P S − D‖_F/‖D‖_F`` with that permutation ``P`` and signs ``S`` (normalised atoms);
    * ``W_err``: ``‖Ŵ Λ⁻¹ P S − W‖_F/‖W‖_F`` with ``Λ`` the atoms' norms (a unit atom's code is
      ``‖d̂_j‖ ẑ_j``).
    """
    from scipy.optimize import linear_sum_assignment

    norms = batch_norm_cols(D_hat).clamp_min(torch.finfo(D_hat.dtype).tiny)  # (B, 1, k)
    Dn = D_hat / norms
    Wn = W_hat / norms  # a unit atom's code is ‖d̂_j‖ ẑ_j, so W's column scales by 1/‖d̂_j‖
    corr = Dn.transpose(1, 2) @ D  # (B, k̂, k)
    atom, derr, werr = [], [], []
    for b in range(D.shape[0]):
        c = corr[b].detach().abs().cpu().numpy()
        rows, cols = linear_sum_assignment(-c)
        perm = torch.as_tensor(rows[cols.argsort()], device=D.device)  # estimated atom matched to each true one
        sign = torch.sign(corr[b][perm, torch.arange(D.shape[2], device=D.device)])
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        Dm = Dn[b][:, perm] * sign
        Wm = Wn[b][:, perm] * sign
        atom.append((1 - (Dm * D[b]).sum(0).abs()).max())
        derr.append(torch.linalg.norm(Dm - D[b]) / torch.linalg.norm(D[b]))
        werr.append(torch.linalg.norm(Wm - W[b]) / torch.linalg.norm(W[b]).clamp_min(torch.finfo(W.dtype).tiny))
    return torch.stack(atom), torch.stack(derr), torch.stack(werr)


def make_dictionary_problem(batch: int, d: int, k: int, q: int, rank: int, sparsity: int, num_samples: int,
                            noise_std: float = 0.0, generator: Optional[torch.Generator] = None,
                            dtype: torch.dtype = torch.float64, orthonormal: bool = True):
    """Synthetic ground truth: ``D`` with i.i.d. Gaussian atoms normalised to unit norm (and, with
    ``orthonormal``, orthogonalised: an incoherent dictionary, for which hard thresholding finds
    every code's support; with coherent random atoms it misses a few percent of them and
    recovery stalls near 1e-3), ``W = U Vᵀ``
    with ``U`` ``(q, r)`` and ``V`` ``(k, r)`` i.i.d. ``N(0, 1/r)`` (rank ``r`` almost surely),
    codes with ``s`` nonzeros at uniformly random positions, i.i.d. random signs times magnitudes
    uniform in ``[1, 1.5]`` (bounded away from zero, so hard thresholding can find the supports),
    and ``Y = DZ + σ E``, ``C = WZ + σ E'`` with white Gaussian noise.

    Returns:
        ``(Y, C, D, W, Z)``: ``(B, d, N)``, ``(B, q, N)``, ``(B, d, k)``, ``(B, q, k)``, ``(B, k, N)``.
    """
    for name, v, lo in (("batch", batch, 1), ("d", d, 1), ("k", k, 1), ("q", q, 1), ("rank", rank, 0),
                        ("sparsity", sparsity, 1), ("num_samples", num_samples, 1)):
        _check_count(name, v, lo)
    if sparsity > k:
        raise ValueError(f"sparsity: expected at most k = {k} nonzeros per code, got {sparsity}")
    kw = dict(generator=generator, dtype=dtype)
    D = torch.randn(batch, d, k, **kw)
    if orthonormal:
        if k > d:
            raise ValueError(f"k: orthonormal atoms need k <= d = {d}, got {k} (pass orthonormal=False)")
        D = torch.linalg.qr(D).Q
    D = D / batch_norm_cols(D)
    W = torch.randn(batch, q, rank, **kw) @ torch.randn(batch, rank, k, **kw) / max(rank, 1)
    support = torch.rand(batch, k, num_samples, **kw).argsort(dim=1)[:, :sparsity]
    values = torch.sign(torch.randn(batch, sparsity, num_samples, **kw)) * (1 + 0.5 * torch.rand(batch, sparsity,
                                                                                                  num_samples, **kw))
    Z = torch.zeros(batch, k, num_samples, dtype=dtype).scatter(1, support, values)
    Y = D @ Z
    C = W @ Z
    if noise_std > 0:
        Y = Y + noise_std * torch.randn(Y.shape, **kw)
        C = C + noise_std * torch.randn(C.shape, **kw)
    return Y, C, D, W, Z
