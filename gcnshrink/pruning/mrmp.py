"""``srmp`` and ``mrmp``: prior-aligned band-stop pruning (Sahbi, arXiv 2312.17615).

The latent weights Ŵ are trained with a KL term that aligns their distribution with a fixed prior,
and a *band-stop* mask removes the weights with |ŵ| ≤ a: ``srmp`` trains for one rate; ``mrmp``
trains one network for several rates on *shared* latent weights and serves any rate in (0, 1)
afterwards, trained or not, with no data and no training (``gcnshrink extract``).

What is implemented; docs/methods.md ("SRMP and MRMP") has the measurements behind each choice
(``benchmarks/mrmp_ablations.py``):

- **Prior**: zero-mean Laplace (default) or Gaussian, one per tensor in scope, fixed when the
  method is attached. Its scale s_t is fitted where it is used (``--fit quantile``, default): the
  prior's band-stop at each trained rate removes, in the dense weights, what the allocation
  removes (least squares in log scale); ``--fit likelihood`` is the maximum-likelihood fit
  (Laplace b = mean |w|, Gaussian s = √mean w²). z = |ŵ| / s_t is a weight in prior units.
- **Quantile map**: q(r) = F⁻¹((1 + r)/2), −ln(1 − r) (Laplace) or √2·erf⁻¹(r) (Gaussian); a
  global rate is split among tensors by ``--allocation lamp`` (default): the split LAMP (Lee et al.
  2021) would make if every tensor followed the prior, which depends on the tensor sizes alone
  (tensor t's half-width x_t solves log(x²/G(x)) − log n_t = τ, G the prior's tail second moment,
  τ set by the budget), so a(r) = s_t·x_t(r); ``pooled`` uses one q(r) for all tensors, with the
  KL on their pooled z (measured: the FC layer's heavy tail then takes the whole budget).
  ``--scope layer`` puts every tensor at the rate.
- **KL estimator** (``--kl``): ``histogram`` (default), D_KL(P‖Q̂) between the prior's masses on
  bins of z whose edges are prior quantiles (a grid from 0.1 to 0.998 plus each tensor's trained
  rates) and the soft-binned (sigmoid-edged) masses of the latent weights, averaged over tensors;
  it pins the fraction beyond each edge. ``moments`` is the closed-form KL between the prior and
  the member of its family fitted to the weights (scale only).
- **Band-stop**: φ(ŵ) = sigmoid((ŵ − a)/T) + sigmoid(−(ŵ + a)/T), T = temperature · a, annealed
  geometrically. ``--mask ste`` (default): the forward pass uses 1[|ŵ| > a], the backward pass φ's
  gradient; ``soft``: φ itself. ``--threshold empirical`` (default): a is each tensor's own
  quantile at its allocated count, recomputed every step, so what is trained is exactly what is
  delivered; ``prior``: a = s_t·x_t(r) from the prior (the paper's reading; measured much worse on
  a fine-tune, whose dense weights follow no single family).
- **Rates per step** (mrmp): ``--distill sandwich`` (default): the step's labelled forward pass
  takes the trained rates but the highest in turn (``--labelled all``: all of them); two more
  forward passes in the method's loss term distil its logits (soft cross-entropy) into the
  network at the highest trained rate and at a rate drawn log-uniformly in kept fraction between
  the two highest trained rates (``--between top``, default; ``all``: between the lowest and the
  highest; measured in ``benchmarks/mrmp_gap.py``: the untrained rates that fall behind are the
  high ones, between the two highest trained rates and beyond); ``--reach 2`` (default) extends
  that range past the highest trained rate, to the rate keeping half its weights, and
  ``--reach-student 1`` (default) distils into the network at that end too (its weight in the
  loss, 0: none): ``--ends alternate`` (default) distils into the highest trained rate and that
  end in turn, one a step, ``both`` into both every step (one more pass a step). The epoch kept
  is the best on validation over the range served (``selection_rates``: the trained rates, their
  log-midpoints, the reach end), scored from half-way through the fine-tune on (``--score-from
  0.5``); with ``--average N`` (mrmp default 5, srmp 1) the average of the
  last N epochs' weights is a candidate too, kept when it scores above every single epoch.
  mrmp's band-stop is wider than srmp's (temperature 1.0 -> 0.1, srmp 0.3 -> 0.03): it couples
  the networks of neighbouring rates. ``--student-labels w`` (default 0.5): each student's term
  is (1 - w) x its distillation + w x its cross-entropy with the step's labels. ``highest``
  distils into the highest only; ``none`` trains one rate per step, chosen by ``--sampling``:
  ``cycle`` (in turn), ``weighted`` (in turn, frequencies ∝ −ln(1 − r)), ``random``,
  ``interval`` (log-uniform between the lowest and the highest).
- **Deliverable** (every epoch's, and every extraction): each tensor's allocated count of largest
  |ŵ| (the counts sum to the global budget c = n − round(r·n) exactly, largest remainders first,
  every tensor keeping a weight while c allows it; ``--scope layer``: n_t − round(r·n_t) each);
  ``pooled``: the c largest z. Deterministic: it depends on the latent weights, the tensor sizes
  and, for ``pooled``, the prior's scales (``state_dict``). mrmp between two trained rates
  (``--bridge scaled``, default): the weights kept beyond the next higher trained rate's network
  enter times alpha, 0 at that rate and 1 at the next lower one (``scales_at``), in extraction
  and in the validation scoring of the fine-tune. mrmp past its highest trained rate
  (``--beyond consistent``, default, global scope): the exact consistent projection of those
  masks, still c weights. ``--projected-students`` (off; measured worse at 0.99 and 0.995) trains
  the random students there with that projection too.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass

import torch

from gcnshrink.errors import GcnshrinkError
from gcnshrink.pruning.budget import budget_per_tensor, global_budget, topk_masks
from gcnshrink.pruning.method import MaskParametrization, PruningMethod, check_annealing, option
from gcnshrink.pruning.registry import register_method

PRIORS = ("laplace", "gaussian")
ALLOCATIONS = ("lamp", "pooled")
# rates whose prior quantiles delimit the histogram bins (each tensor's trained rates are added)
HISTOGRAM_RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998)
_INVERSE_TABLE_SIZE = 4000


# ---------------------------------------------------------------------------- the prior
class Prior:
    """A zero-mean symmetric prior, in standardized units z = |w| / s (s: the tensor's scale).

    ``quantile(r)`` is q(r) = F⁻¹((1 + r)/2), the half-width of the band holding the fraction r;
    ``kept(x)`` the mass beyond x; ``log_lamp(z)`` the LAMP score of a weight at z in a tensor
    whose weights follow the prior exactly, up to the tensor's size: LAMP (Lee et al. 2021) is
    w² over the sum of the squares of the weights at least as large, here n·E[z² 1(z ≥ x)], so
    log LAMP = log(z² / G(z)) − log n with G the tail second moment.
    """

    def __init__(self, family: str):
        if family not in PRIORS:
            raise GcnshrinkError(f"unknown prior {family!r}; one of {', '.join(PRIORS)}")
        self.family = family
        self._table: tuple[list[float], list[float]] | None = None

    def quantile(self, rate: float) -> float:
        if self.family == "laplace":
            return -math.log1p(-rate)
        return math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(rate, dtype=torch.float64)))

    def kept(self, x: float) -> float:
        if self.family == "laplace":
            return math.exp(-x)
        return math.erfc(x / math.sqrt(2.0))

    def fit_scale(self, weight: torch.Tensor) -> float:
        """Maximum-likelihood scale: Laplace b = mean |w|, Gaussian s = √(mean w²)."""
        w = weight.detach().double()
        if self.family == "laplace":
            return max(float(w.abs().mean()), 1e-12)
        return max(float(w.pow(2).mean().sqrt()), 1e-12)

    def fit_scale_at(self, weight: torch.Tensor, thresholds: list[float]) -> float:
        """The scale whose band-stops at these standardized thresholds x remove, in this tensor,
        the fractions the prior says (1 − kept(x)): least squares in log scale over the empirical
        quantiles |w|_(1 − kept(x)). Falls back to maximum likelihood on a tensor of zeros."""
        magnitudes = weight.detach().abs().reshape(-1).double()
        n = magnitudes.numel()
        logs = []
        for x in thresholds:
            k = min(max(round((1.0 - self.kept(x)) * n), 1), n)
            value = float(torch.kthvalue(magnitudes, k).values)
            if value > 0 and x > 0:
                logs.append(math.log(value) - math.log(x))
        if not logs:
            return self.fit_scale(weight)
        return max(math.exp(sum(logs) / len(logs)), 1e-12)

    def log_lamp(self, z: torch.Tensor) -> torch.Tensor:
        """log(z² / G(z)), increasing in z (−inf at 0, +inf where G underflows)."""
        z = z.double()
        if self.family == "laplace":
            log_tail = torch.log(z * z + 2.0 * z + 2.0) - z
        else:
            density = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
            log_tail = torch.log(2.0 * z * density + torch.special.erfc(z / math.sqrt(2.0)))
        return 2.0 * torch.log(z) - log_tail

    def _inverse_table(self) -> tuple[list[float], list[float]]:
        if self._table is None:
            top = 600.0 if self.family == "laplace" else 35.0
            xs = torch.logspace(-6, math.log10(top), _INVERSE_TABLE_SIZE, dtype=torch.float64)
            self._table = (xs.tolist(), self.log_lamp(xs).tolist())
        return self._table

    def _x_of_log_lamp(self, value: float) -> float:
        xs, fs = self._inverse_table()
        i = bisect.bisect_left(fs, value)
        if i <= 0:
            return xs[0]
        if i >= len(fs):
            return xs[-1]
        t = (value - fs[i - 1]) / (fs[i] - fs[i - 1])
        return xs[i - 1] + t * (xs[i] - xs[i - 1])

    def lamp_thresholds(self, sizes: dict[str, int], rate: float) -> dict[str, float]:
        """Per-tensor standardized thresholds x_t at ``rate`` under one global LAMP threshold τ:
        x_t solves log(x²/G(x)) − log n_t = τ, and Σ n_t·kept(x_t) = (1 − r)·Σ n_t."""
        xs, fs = self._inverse_table()
        logs = {name: math.log(n) for name, n in sizes.items()}
        wanted = (1.0 - rate) * sum(sizes.values())

        def kept_at(tau: float) -> float:
            return sum(n * self.kept(self._x_of_log_lamp(tau + logs[k])) for k, n in sizes.items())

        low, high = fs[0] - max(logs.values()) - 1.0, fs[-1] - min(logs.values()) + 1.0
        for _ in range(100):
            middle = 0.5 * (low + high)
            if kept_at(middle) > wanted:
                low = middle
            else:
                high = middle
        tau = 0.5 * (low + high)
        return {k: self._x_of_log_lamp(tau + logs[k]) for k in sizes}


def moment_kl(family: str, z: torch.Tensor) -> torch.Tensor:
    """Closed-form KL between the standardized prior and the member of its family fitted to z.

    Both are ρ − 1 − ln ρ up to a factor, with ρ the fitted scale over the prior's: Laplace
    ρ = mean z; Gaussian ρ = mean z² (the variance ratio), factor ½."""
    if family == "laplace":
        rho = z.mean().clamp(min=1e-12)
        return rho - 1.0 - torch.log(rho)
    rho = z.pow(2).mean().clamp(min=1e-12)
    return 0.5 * (rho - 1.0 - torch.log(rho))


class HistogramKL:
    """D_KL(P‖Q̂) on bins of z delimited by prior quantiles.

    Edge e_i = q(ρ_i) for the fixed grid of rates plus ``required`` ones (the rates the band-stop
    uses in training: a grid point closer than 0.05 to one of them is dropped); the prior puts
    ρ_{i+1} − ρ_i in bin i. The weights' fraction beyond an edge is the mean of sigmoid((z − e)/h)
    (one bandwidth h for all edges, a sixth of the narrowest bin, so the soft fractions stay
    ordered); bin masses are their differences. A weight's sigmoid is evaluated only for the two
    edges around it (beyond them it is 0 or 1 to within 0.25 %), so the cost is two sigmoids per
    weight, whatever the number of bins.
    """

    def __init__(self, prior: Prior, required: tuple[float, ...]):
        required_edges = [prior.quantile(r) for r in required]
        grid = {round(r, 9) for r in required}
        for r in HISTOGRAM_RATES:
            if all(abs(prior.quantile(r) - e) >= 0.05 for e in required_edges):
                grid.add(r)
        rates = sorted(grid)
        edges = [prior.quantile(r) for r in rates]
        gaps = [b - a for a, b in zip([0.0, *edges], edges, strict=False)]
        self.bandwidth = max(min(gaps) / 6.0, 1e-3)
        self.edges = torch.tensor(edges, dtype=torch.float32)
        bounds = [0.0, *rates, 1.0]
        self.prior = torch.tensor([b - a for a, b in zip(bounds, bounds[1:], strict=False)])

    def beyond(self, z: torch.Tensor) -> torch.Tensor:
        """Soft fraction of z beyond each edge, differentiable in z."""
        z = z.reshape(-1)
        edges = self.edges.to(z.device, z.dtype)
        count = len(edges)
        detached = z.detach()
        # j: how many edges lie below each weight (a loop of compares beats searchsorted here)
        below = torch.zeros_like(detached, dtype=torch.uint8)
        for e in edges.tolist():
            below += detached > e
        j = below.long()
        hard = z.numel() - torch.cumsum(torch.bincount(j, minlength=count + 1), 0)[:count]
        inf = edges.new_tensor([math.inf])
        padded = torch.cat([-inf, edges, inf])  # padded[j] is the edge below, padded[j+1] above
        lower = torch.sigmoid((z - padded[j]) / self.bandwidth) - 1.0  # instead of counting 1
        upper = torch.sigmoid((z - padded[j + 1]) / self.bandwidth)  # instead of counting 0
        soft = z.new_zeros(count + 2).scatter_add(0, j, lower).scatter_add(0, j + 1, upper)
        return (hard.to(z.dtype) + soft[1 : count + 1]) / z.numel()

    def masses(self, z: torch.Tensor) -> torch.Tensor:
        beyond = self.beyond(z)
        one = beyond.new_ones(1)
        return torch.cat([one, beyond]) - torch.cat([beyond, one.new_zeros(1)])

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        p = self.prior.to(z.device, z.dtype)
        q = self.masses(z).clamp(min=1e-6)
        return (p * (torch.log(p) - torch.log(q))).sum()


# ---------------------------------------------------------------------------- the band-stop
class BandController:
    """What every tensor's band-stop reads at this step: its standardized half-width q_t, the
    temperature and the mask mode; the prior's scale per tensor."""

    def __init__(self, scales: dict[str, float], temperature: float, mode: str):
        self.scales = scales
        self.q: dict[str, float] = {}
        self.temperature = temperature
        self.mode = mode
        # hard masks that replace the band-stop's for a forward pass (a projected student);
        # the band at q still gives the gradient
        self.fixed: dict[str, torch.Tensor] | None = None
        # --bridge-students between two trained rates: the weights under the higher rate's
        # half-width (standardized, per tensor) enter times alpha (BandStop.mask)
        self.bridge: tuple[dict[str, float], float] | None = None


class BandStop(MaskParametrization):
    """W -> W ⊙ φ(W): φ ≈ 0 on [−a, a] and ≈ 1 outside, a = s_t · q_t."""

    def __init__(self, controller: BandController, name: str):
        super().__init__()
        # a plain attribute, not a submodule: every parametrization shares the one controller
        object.__setattr__(self, "controller", controller)
        self.name = name

    def mask(self, weight: torch.Tensor) -> torch.Tensor:
        c = self.controller
        a = c.scales[self.name] * c.q[self.name]
        width = max(c.temperature * a, 1e-12)
        soft = torch.sigmoid((weight - a) / width) + torch.sigmoid(-(weight + a) / width)
        if c.fixed is not None:
            mask = c.fixed[self.name].to(weight.dtype) + (soft - soft.detach())
        elif c.mode == "soft":
            mask = soft
        else:
            mask = (weight.abs() > a).to(weight.dtype) + (soft - soft.detach())
        if c.bridge is None:
            return mask
        # --bridge-students: alpha for the weights the next higher trained rate removes
        q_high, alpha = c.bridge
        above = weight.detach().abs() > c.scales[self.name] * q_high[self.name]
        return mask * torch.where(above, 1.0, alpha).to(weight.dtype)


# ---------------------------------------------------------------------------- the methods
def largest_remainder(
    shares: dict[str, float], total: int, caps: dict[str, int], floor: int = 1
) -> dict[str, int]:
    """Integers proportional to ``shares``, each at most its cap and at least ``floor`` (when the
    total allows it), summing to exactly ``total`` (≤ the sum of caps). Deterministic: the largest
    remainders are rounded up first, ties by name."""
    scale = total / max(sum(shares.values()), 1e-300)
    exact = {k: min(v * scale, caps[k]) for k, v in shares.items()}
    counts = {k: int(math.floor(v)) for k, v in exact.items()}
    if total >= floor * len(shares):
        counts = {k: min(max(c, floor), caps[k]) for k, c in counts.items()}
    up = sorted(shares, key=lambda k: (counts[k] - exact[k], k))  # largest shortfall first
    down = sorted(shares, key=lambda k: (exact[k] - counts[k], k))  # largest excess first
    while sum(counts.values()) < total:
        k = next(k for k in up if counts[k] < caps[k])
        counts[k] += 1
        up.remove(k)
        up.append(k)
    while sum(counts.values()) > total:
        k = next(k for k in down if counts[k] > floor)
        counts[k] -= 1
        down.remove(k)
        down.append(k)
    return counts


def keep_largest(weight: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` largest |w| (ties by position, as torch.topk breaks them)."""
    flat = weight.detach().abs().reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if count > 0:
        keep[torch.topk(flat, min(count, flat.numel()), sorted=False).indices] = True
    return keep.view_as(weight)


AVERAGE_HELP = (
    "Also offer the average of the weights of the last N epochs to the validation selection, "
    "kept if it beats every single epoch (srmp/mrmp; 1: no averaging)."
)


@dataclass
class SRMPOptions:
    prior: str = option(
        "laplace", "Prior of the latent weights (srmp/mrmp): laplace or gaussian.", choices=PRIORS
    )
    allocation: str = option(
        "lamp",
        "How a global rate is split among tensors (srmp/mrmp): lamp (the LAMP split of weights "
        "that follow the prior: depends on tensor sizes only) or pooled (one band in prior units "
        "for all tensors). With --scope layer every tensor is at the rate.",
        choices=ALLOCATIONS,
    )
    threshold: str = option(
        "empirical",
        "Band-stop half-width during training (srmp/mrmp): the prior's quantile a(r) (prior), or "
        "the latent weights' own quantile at the tensor's budget (empirical: the trained mask is "
        "the delivered one).",
        choices=("empirical", "prior"),
    )
    fit: str = option(
        "quantile",
        "How the prior's scale is fitted to each tensor's dense weights (srmp/mrmp): at the "
        "quantiles of the trained rates (quantile) or by maximum likelihood (likelihood).",
        choices=("quantile", "likelihood"),
    )
    kl: str = option(
        "histogram",
        "KL estimator (srmp/mrmp): histogram on prior-quantile bins, or moments (scale only).",
        choices=("histogram", "moments"),
    )
    kl_weight: float = option(1.0, "Weight λ of the KL term (srmp/mrmp).")
    mask: str = option(
        "ste",
        "Band-stop in the forward pass (srmp/mrmp): ste (hard, soft gradient) or soft.",
        choices=("ste", "soft"),
    )
    band_temperature_start: float = option(
        0.3, "Band-stop sigmoid temperature (× the half-width a) at the start (srmp/mrmp)."
    )
    band_temperature_end: float = option(
        0.03, "Band-stop temperature at the end of the fine-tune (annealed geometrically)."
    )
    average: int = option(1, AVERAGE_HELP)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise GcnshrinkError(f"--kl-weight must be a finite number >= 0, got {self.kl_weight}")
        check_annealing(self, "band_temperature_start", "band_temperature_end")
        if self.average < 1:  # the type is checked with every option's
            raise GcnshrinkError(f"--average must be an integer >= 1, got {self.average}")


@register_method
class SingleRateMagnitudePruning(PruningMethod):
    """``srmp``: the band-stop at one rate, latent weights aligned with the prior."""

    name = "srmp"
    Options = SRMPOptions

    # ---------------------------------------------------------------- set-up
    def setup(self) -> None:
        self.prior = Prior(self.options.prior)
        self.steps = 0
        self.current_rate = max(self.spec.rates)
        self.controller = BandController({}, self.options.band_temperature_start, self.options.mask)
        self._cache: dict[tuple[str, float], dict] = {}
        latent = self.latent()
        if self.options.fit == "quantile":
            at = {r: self.prior_thresholds(r) for r in self.spec.rates}
            scales = {
                name: self.prior.fit_scale_at(w, [at[r][name] for r in self.spec.rates])
                for name, w in latent.items()
            }
        else:
            scales = {name: self.prior.fit_scale(w) for name, w in latent.items()}
        self.controller.scales.update(scales)
        self.controller.q = self.band(self.current_rate)
        # the histogram's bins include, per tensor, the rate it is at for each trained rate
        if self.pooled:
            self.histograms = {"": HistogramKL(self.prior, tuple(self.spec.rates))}
        else:
            self.histograms = {
                name: HistogramKL(
                    self.prior,
                    tuple(
                        1.0 - self.prior.kept(self.prior_thresholds(r)[name])
                        for r in self.spec.rates
                    ),
                )
                for name in scales
            }
        self.last_kl: float | None = None
        for b in self.targets:
            self.register(b.name, BandStop(self.controller, b.name))

    @property
    def family(self) -> str:
        return self.prior.family

    @property
    def scales(self) -> dict[str, float]:
        return self.controller.scales

    @property
    def pooled(self) -> bool:
        """One band in prior units for all tensors (and the KL on their pooled weights)."""
        return self.spec.scope == "global" and self.options.allocation == "pooled"

    def _cached(self, kind: str, rate: float, compute):
        key = (kind, rate)
        if key not in self._cache:
            if len(self._cache) > 256:  # interval sampling draws new rates: keep the cache small
                self._cache.clear()
            self._cache[key] = compute()
        return self._cache[key]

    def prior_thresholds(self, rate: float) -> dict[str, float]:
        """Standardized half-width x_t of every tensor's band at ``rate`` under the prior: the
        LAMP split (global scope), or the prior's quantile q(r) for every tensor."""

        def compute():
            if self.spec.scope == "global" and self.options.allocation == "lamp":
                return self.prior.lamp_thresholds(self.sizes(), rate)
            q = self.prior.quantile(rate)
            return {b.name: q for b in self.targets}

        return self._cached("prior", rate, compute)

    def allocation(self, rate: float) -> dict[str, int] | None:
        """Weights kept per tensor at ``rate`` (exactly the budget), or None for ``pooled``, whose
        split follows the weights (one global ranking of z)."""
        if self.pooled:
            return None

        def compute():
            sizes = self.sizes()
            if self.spec.scope == "layer":
                return budget_per_tensor(sizes, rate)
            x = self.prior_thresholds(rate)
            shares = {k: n * self.prior.kept(x[k]) for k, n in sizes.items()}
            return largest_remainder(shares, global_budget(sizes, rate), sizes)

        return self._cached("allocation", rate, compute)

    def standardized(self) -> dict[str, torch.Tensor]:
        """z = |ŵ| / s_t per tensor, differentiable in the latent weights."""
        return {n: w.abs() / self.scales[n] for n, w in self.latent().items()}

    def band(self, rate: float) -> dict[str, float]:
        """Standardized half-width q_t of every tensor's band-stop for a training step at
        ``rate``: the prior's, or the latent weights' own quantile at the allocation."""
        if self.options.threshold == "prior":
            return self.prior_thresholds(rate)
        with torch.no_grad():
            z = {n: v.detach().reshape(-1) for n, v in self.standardized().items()}
            counts = self.allocation(rate)
            if counts is None:  # pooled: one threshold over all z
                pooled = torch.cat(list(z.values()))
                return dict.fromkeys(z, self.boundary(pooled, global_budget(self.sizes(), rate)))
            return {n: self.boundary(v, counts[n]) for n, v in z.items()}

    @staticmethod
    def boundary(values: torch.Tensor, kept: int) -> float:
        """A threshold with exactly ``kept`` values above it (barring ties): halfway between the
        kept-th and the (kept+1)-th largest."""
        n = values.numel()
        if kept >= n:
            return 0.0
        below = float(torch.kthvalue(values, n - kept).values)  # the largest removed value
        if kept == 0:
            return below * 1.000001 + 1e-12
        above = float(torch.kthvalue(values, n - kept + 1).values)  # the smallest kept
        return 0.5 * (below + above)

    # ---------------------------------------------------------------- training
    def rate_for_step(self) -> float:
        return self.spec.rate

    def on_step(self, progress: float) -> None:
        start, end = self.options.band_temperature_start, self.options.band_temperature_end
        self.controller.temperature = start * (end / start) ** min(max(progress, 0.0), 1.0)
        self.current_rate = self.rate_for_step()
        self.controller.q = self.band(self.current_rate)
        self.steps += 1

    def kl(self) -> torch.Tensor:
        """The KL term (without its weight) at the current latent weights: on the pooled
        standardized weights, or the mean over tensors."""
        z = self.standardized()
        if self.pooled:
            z = {"": torch.cat([v.reshape(-1) for v in z.values()])}
        if self.options.kl == "moments":
            terms = [moment_kl(self.family, v.reshape(-1)) for v in z.values()]
        else:
            terms = [self.histograms[name](v) for name, v in z.items()]
        return sum(terms) / len(terms)

    def loss(self) -> torch.Tensor | None:
        if self.options.kl_weight == 0:
            return None
        value = self.kl()
        self.last_kl = float(value.detach())
        return self.options.kl_weight * value

    def prior_fraction_removed(self, rate: float) -> float:
        """Fraction of the weights in scope that the prior's band-stop a(r) removes now (r when
        the weights follow the prior)."""
        x = self.prior_thresholds(rate)
        with torch.no_grad():
            removed = sum(int((v <= x[n]).sum()) for n, v in self.standardized().items())
        return removed / max(sum(self.sizes().values()), 1)

    def averaged_epochs(self) -> int:
        return self.options.average

    def status(self) -> str:
        kl = "" if self.last_kl is None else f"  KL {self.last_kl:.4f}"
        return f"rate {self.current_rate:g}{kl}"

    # ---------------------------------------------------------------- result
    def compute_masks(self, rate: float) -> dict[str, torch.Tensor]:
        """Exactly the budget at ``rate``: every tensor's allocated count of largest |ŵ|, or,
        for ``pooled``, the global budget of largest z (no tensor emptied)."""
        counts = self.allocation(rate)
        with torch.no_grad():
            if counts is not None:
                return {n: keep_largest(w, counts[n]) for n, w in self.latent().items()}
            scores = {n: v.detach().clone() for n, v in self.standardized().items()}
            for s in scores.values():  # no tensor is emptied: its largest weight stays
                s.view(-1)[int(torch.argmax(s))] = float("inf")
            return topk_masks(scores, rate, "global")

    def state_dict(self) -> dict:
        return {
            "prior": self.family,
            "scales": dict(self.scales),
            "steps": self.steps,
            "temperature": self.controller.temperature,
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            raise GcnshrinkError(
                f"{self.name}: the checkpoint holds no prior (method_state is empty); it cannot "
                "be extracted"
            )
        if state["prior"] != self.family:
            raise GcnshrinkError(
                f"{self.name}: the checkpoint's prior is {state['prior']}, not {self.family}"
            )
        missing = sorted(set(self.scales) - set(state["scales"]))
        if missing:
            raise GcnshrinkError(f"{self.name}: the checkpoint has no prior scale for {missing[0]}")
        self.controller.scales.update({k: float(state["scales"][k]) for k in self.scales})
        self.steps = int(state["steps"])
        self.controller.temperature = float(state["temperature"])


def weighted_turn(rates: list[float], step: int) -> float:
    """The rate of training step ``step`` when the rates take turns with frequencies proportional
    to −ln(1 − r) (e-folds of compression: 0.99 trains 6.6 times as often as 0.5); smooth weighted
    round robin, deterministic and evenly spread."""
    weights = [-math.log1p(-r) for r in rates]
    total = sum(weights)
    credit = [0.0] * len(rates)
    chosen = 0
    for _ in range(step % _ROUND_ROBIN_PERIOD + 1):
        credit = [c + w for c, w in zip(credit, weights, strict=True)]
        chosen = max(range(len(rates)), key=lambda i: (credit[i], -i))
        credit[chosen] -= total
    return rates[chosen]


_ROUND_ROBIN_PERIOD = 1000


@dataclass
class MRMPOptions(SRMPOptions):
    # a wider band than srmp's: the soft band-stop's gradient reaches the weights a few ranks
    # past each network's threshold, which couples the networks of neighbouring rates. Measured
    # against per-rate srmp over 3 seeds of hands and sbu (docs/methods.md): the mean gap over the
    # 14 (dataset, rate) cells goes from -2.0 to -1.4 pp and the worst from -14.2 to -7.9 pp
    band_temperature_start: float = option(
        1.0, "Band-stop sigmoid temperature (× the half-width a) at the start (srmp/mrmp)."
    )
    band_temperature_end: float = option(
        0.1, "Band-stop temperature at the end of the fine-tune (annealed geometrically)."
    )
    # mrmp's networks between its trained rates are trained only by the random students and swing
    # by 10 points from epoch to epoch; averaging the last epochs' latent weights smooths that out.
    # Measured against per-rate srmp over 3 seeds of hands and sbu (docs/methods.md, "Weight
    # averaging"): the mean gap over 7 rates goes from -1.6 to +0.3 pp (hands) and from -2.2 to
    # -1.7 pp (sbu); 2, 3 and 8 epochs do worse on the mean of both
    average: int = option(5, AVERAGE_HELP)
    sampling: str = option(
        "cycle",
        "Which rate each training step uses (mrmp): the trained rates in turn (cycle), in turn "
        "with frequencies ∝ −ln(1 − r) (weighted), one of them at random (random), or any rate "
        "between the lowest and highest (interval). Under --distill sandwich the labelled pass "
        "takes its rates in turn (cycle, random and interval) or weighted.",
        choices=("cycle", "weighted", "random", "interval"),
    )
    distill: str = option(
        "sandwich",
        "Extra forward passes per step that distil the step's network into sparser ones "
        "(mrmp): none; highest (the highest trained rate); sandwich (the step at the lowest "
        "rate with labels, the highest and one rate between them distilled).",
        choices=("none", "highest", "sandwich"),
    )
    labelled: str = option(
        "below",
        "Rates of the labelled pass with --distill sandwich (mrmp): the trained rates but the "
        "highest, in turn (below), or all of them in turn (all).",
        choices=("below", "all"),
    )
    between: str = option(
        "top",
        "Where --distill sandwich draws its random student's rate (mrmp): log-uniformly in kept "
        "fraction between the two highest trained rates (top), or between the lowest and the "
        "highest (all).",
        choices=("top", "all"),
    )
    reach: float = option(
        2.0,
        "How far past the highest trained rate --distill sandwich draws its random students "
        "(mrmp): up to the rate that keeps 1/reach of the highest rate's weights (2: 0.99 -> "
        "0.995; 1: no further than the highest).",
    )
    # the random student reaches the end of the --reach range in a few steps only, and sbu's
    # 0.995 (past the highest trained rate) stayed 6 pp behind per-rate srmp. Measured over 3
    # seeds on one machine (docs/methods.md, "A student at the reach end"): sbu 0.995 from -6.0
    # to -1.0 pp, the mean over the 14 (dataset, rate) cells from -0.4 to +0.2 pp; it costs
    # hands' 0.97 / 0.985 0.9 / 0.6 pp (to -3.6 / -2.4)
    reach_student: float = option(
        1.0,
        "Weight of one more distilled student of --distill sandwich, at the end of the --reach "
        "range (mrmp; 0: none); --ends says whether it takes turns with the highest trained "
        "rate or costs one more forward/backward pass a step.",
    )
    # with the highest trained rate and the reach end distilled every step, hands' 0.97 / 0.985
    # stayed 3.6 / 2.4 pp behind per-rate srmp at the per-rate runs' epochs; with 1.5x the epochs
    # they close, at 0.70x / 0.72x the time of the seven per-rate runs (hands / sbu). Measured
    # over 3 seeds on one machine (docs/methods.md, "One end a step, 1.5x the epochs"): in turn,
    # at 1.5x the epochs, every rate of hands and sbu is within 2 pp of per-rate srmp (worst
    # -1.6 / -1.6; both: -1.5 / -1.8) at 0.61x their time; at 1x it is worse (-3.7 / -4.9)
    ends: str = option(
        "alternate",
        "With --reach-student (mrmp): distil into the highest trained rate and into the end of "
        "the --reach range in turn, one of them a step (alternate), or both every step (both: "
        "one more forward/backward pass a step).",
        choices=("alternate", "both"),
    )
    random_students: int = option(
        1,
        "Random students per step of --distill sandwich (mrmp), each at its own rate drawn "
        "in the --between/--reach range; each costs one more forward/backward pass.",
    )
    beyond: str = option(
        "consistent",
        "Extraction at rates past the highest trained one (mrmp, global scope): the exact "
        "topologically consistent projection of each tensor's magnitude ranking (consistent: no "
        "weight on a unit cut off from the input or the output; the budget goes to the next "
        "weights of connected units), or the magnitude ranking alone (magnitude, nested in every "
        "lower rate's mask).",
        choices=("consistent", "magnitude"),
    )
    # the network just below a trained rate was worse than the sparser trained one (hands 0.985
    # below 0.99 on every seed): the weights it adds were trained in the denser networks only.
    # Measured against per-rate srmp over 3 seeds (docs/methods.md, "Bridging and labelled
    # students"): hands 0.97 / 0.985 from -0.6 / -4.7 to -1.2 / -2.1 pp, sbu (1,600 test
    # samples) from -1.2 / -3.2 to -0.5 / -1.2; the trained rates do not move
    bridge: str = option(
        "scaled",
        "Networks between two trained rates (mrmp), as extracted and as scored on validation: "
        "the weights a rate keeps beyond the next higher trained rate's network enter times "
        "alpha, from 0 at that rate to 1 at the next lower one, log-linear in kept fraction "
        "(scaled); or at full strength (none).",
        choices=("scaled", "none"),
    )
    bridge_students: bool = option(
        False,
        "Train the random students between two trained rates with the --bridge scaled networks "
        "too (mrmp; off: measured worse), so what is trained there is what is extracted.",
    )
    # students that only imitate the labelled network cannot beat it; on sbu per-rate srmp is
    # 1-3 pp more accurate at 0.97-0.995 than at 0.5-0.95. Measured with --bridge scaled over 3
    # seeds (docs/methods.md, "Bridging and labelled students"): the gap to per-rate srmp goes
    # from -2.6 to -2.0 pp at 0.99 on sbu and from -2.1 to -1.2 at 0.985 on hands, and every
    # hands rate is within 2 pp
    student_labels: float = option(
        0.5,
        "Weight w of the labels in each distilled student's loss (mrmp): (1 - w) times the "
        "distillation from the step's network plus w times the cross-entropy with the labels "
        "(0: distillation alone).",
    )
    # mrmp scores an epoch at its whole selection grid (nine rates for 0.5, 0.9, 0.95, 0.99, one
    # of them with a consistent projection). Its networks climb through the fine-tune: in every
    # benchmark run of 2026-12-03 (hands and sbu, 3 seeds, 1x to 2x the epochs) the epoch kept
    # was in the second half, so not scoring the first half keeps the same epoch, sooner
    score_from: float = option(
        0.5,
        "Score epochs on validation only from this fraction of the fine-tune on (mrmp; 0: every "
        "epoch); the earlier ones still count for --average.",
    )
    projected_students: bool = option(
        False,
        "Train the students past the highest trained rate (random, --reach-student) with the masks "
        "extracted there (mrmp, --beyond consistent): their consistent projection instead of the "
        "magnitude band-stop, so what is trained there is what is extracted.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.random_students < 1:  # the type is checked with every option's
            raise GcnshrinkError(
                f"--random-students must be an integer >= 1, got {self.random_students}"
            )
        if not (self.reach >= 1.0 and math.isfinite(self.reach)):
            raise GcnshrinkError(f"--reach must be a finite number >= 1, got {self.reach}")
        if not (self.reach_student >= 0.0 and math.isfinite(self.reach_student)):
            raise GcnshrinkError(
                f"--reach-student must be a finite number >= 0, got {self.reach_student}"
            )
        if not 0.0 <= self.score_from < 1.0:
            raise GcnshrinkError(f"--score-from must be a number in [0, 1), got {self.score_from}")
        if not 0.0 <= self.student_labels <= 1.0:
            raise GcnshrinkError(
                f"--student-labels must be a number from 0 to 1, got {self.student_labels}"
            )


def mask_first_scores(
    weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Scores for the consistent projection of magnitude ``masks`` (``--beyond consistent``): every
    masked-in weight ranks above every other, the rest rank by magnitude relative to their tensor's
    threshold (its smallest kept magnitude), so a budget freed from dead units is re-spent where
    each tensor's own ranking would go next."""
    relative, kept = {}, {}
    for name, weight in weights.items():
        magnitude = weight.detach().abs().cpu().double()
        kept[name] = masks[name].cpu()
        threshold = magnitude[kept[name]].min() if kept[name].any() else magnitude.max()
        relative[name] = magnitude / threshold.clamp(min=1e-30)
    lead = 1.0 + max(float(r.max()) for r in relative.values() if r.numel())
    return {n: r + lead * kept[n].double() for n, r in relative.items()}


def log_uniform_rate(low: float, high: float, u: float) -> float:
    """The rate whose kept fraction is log-uniform between those of ``low`` and ``high``."""
    a, b = math.log1p(-high), math.log1p(-low)
    return -math.expm1(a + u * (b - a))


@register_method
class MultiRateMagnitudePruning(SingleRateMagnitudePruning):
    """``mrmp``: one training on shared latent weights for several rates; any rate extracted."""

    name = "mrmp"
    Options = MRMPOptions
    multi_rate = True
    options_before = {"beyond": "magnitude", "bridge": "none"}

    def setup(self) -> None:
        super().setup()
        self._captured: tuple[torch.Tensor, torch.Tensor] | None = None
        self._capturing = False
        self._labels: torch.Tensor | None = None
        self._hook = None  # registered by the first training step (never by an extraction)

    def _capture(self, module, inputs, output) -> None:
        """The step's input and logits (the teacher), taken from the training loop's forward."""
        if self._capturing and module.training:
            self._captured = (inputs[0], output.detach())
            self._capturing = False

    def uniform(self, stream: int, count: int = 1) -> list[float]:
        """``count`` uniform draws of this step's ``stream``: deterministic in (seed, step)."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.steps) * 4 + stream)
        return torch.rand(count, generator=generator, dtype=torch.float64).tolist()

    def rate_for_step(self) -> float:
        rates = sorted(self.spec.rates)
        mode = self.options.sampling
        if self.options.distill == "sandwich" and len(rates) > 1:
            labelled = rates if self.options.labelled == "all" else rates[:-1]
            if mode == "weighted":
                return weighted_turn(labelled, self.steps)
            return labelled[self.steps % len(labelled)]  # in turn, with labels
        if mode == "cycle":
            return rates[self.steps % len(rates)]
        if mode == "weighted":
            return weighted_turn(rates, self.steps)
        u = self.uniform(0)[0]
        if mode == "random":
            return rates[min(int(u * len(rates)), len(rates) - 1)]
        return log_uniform_rate(rates[0], rates[-1], u)

    def reach_end(self) -> float:
        """The sparsest rate the training draws: the highest trained rate, or past it (--reach)."""
        return 1.0 - (1.0 - max(self.spec.rates)) / self.options.reach

    def selection_rates(self) -> tuple[float, ...]:
        """The epoch kept is the best on validation over the range the checkpoint serves, not only
        at the trained rates: those, the log-midpoint (in kept fraction) between each pair of
        neighbours, and the end of the --reach range: an untrained rate can collapse in one epoch
        while the trained rates hold steady (docs/methods.md, "Which epoch is kept")."""
        rates = sorted(self.spec.rates)
        middles = [1.0 - math.sqrt((1.0 - a) * (1.0 - b)) for a, b in itertools.pairwise(rates)]
        end = self.reach_end()
        # only sandwich distillation draws past the highest trained rate
        reached = self.options.distill == "sandwich" and len(rates) > 1 and end > rates[-1]
        return tuple(sorted({*rates, *middles, *([end] if reached else [])}))

    def selection_start(self) -> float:
        return self.options.score_from

    def student_rates(self) -> list[float]:
        return [rate for rate, _ in self.student_weights()]

    def student_weights(self) -> list[tuple[float, float]]:
        """This step's distilled students: (rate, weight of its loss term)."""
        rates = sorted(self.spec.rates)
        if len(rates) == 1:  # trained for one rate: nothing sparser to distil into
            return []
        highest = [(rates[-1], 1.0)] if self.current_rate < rates[-1] else []
        if self.options.distill == "highest":
            return highest
        if self.options.distill != "sandwich":
            return []
        low = rates[-2] if self.options.between == "top" else rates[0]
        high = self.reach_end()
        students = list(highest)
        if self.options.reach_student > 0 and high > rates[-1]:
            reach = [(high, self.options.reach_student)]
            if self.options.ends == "alternate" and highest:
                students = highest if self.steps % 2 == 0 else reach  # one end a step, in turn
            else:
                students += reach
        drawn = self.uniform(1, self.options.random_students)
        return [*students, *((log_uniform_rate(low, high, u), 1.0) for u in drawn)]

    def compute_masks(self, rate: float) -> dict[str, torch.Tensor]:
        """At a rate up to the highest trained one, the magnitude masks the training used. Past
        it, with ``--beyond consistent``, their exact consistent projection: no network there was
        trained, a larger share of the magnitude mask sits on units cut off from the input or the
        output (about a tenth at 0.995 on gcn), and re-spending it on connected units gained
        2.5-11.7 points at 0.995 on every seed measured (benchmarks/mrmp_beyond.py)."""
        masks = super().compute_masks(rate)
        if not self.projects_at(rate):
            return masks
        with torch.no_grad():
            scores = mask_first_scores(self.latent(), masks)
            projected = self.project(scores, self.budget(rate), k_hint=self.budget(rate))
        return {name: projected[name].to(mask.device) for name, mask in masks.items()}

    def bridge_at(self, rate: float) -> tuple[float, float] | None:
        """(the next higher trained rate, alpha) for a rate strictly between two trained ones
        under --bridge scaled; None otherwise. alpha = ln(kept(r)/kept(high)) /
        ln(kept(low)/kept(high)) in kept fractions: 0 at the higher trained rate, 1 at the lower,
        so the networks between them pass continuously from one trained network to the next."""
        rates = sorted(self.spec.rates)
        if self.options.bridge == "none" or not rates[0] < rate < rates[-1] or rate in rates:
            return None
        high = min(r for r in rates if r > rate)
        low = max(r for r in rates if r < rate)
        alpha = math.log((1.0 - rate) / (1.0 - high)) / math.log((1.0 - low) / (1.0 - high))
        return high, alpha

    def scales_at(self, rate: float) -> dict[str, torch.Tensor] | None:
        """Under --bridge scaled, between two trained rates: alpha for the kept weights that the
        next higher trained rate's network does not keep, 1 for the others."""
        bridged = self.bridge_at(rate)
        if bridged is None:
            return None
        high, alpha = bridged
        # at or below the highest trained rate, the plain magnitude masks (no projection)
        masks = SingleRateMagnitudePruning.compute_masks(self, high)
        return {name: torch.where(m, 1.0, alpha).float() for name, m in masks.items()}

    def bridge_band(self, rate: float) -> tuple[dict[str, float], float] | None:
        """What the band-stops read for a training pass at ``rate`` under --bridge-students."""
        bridged = self.bridge_at(rate) if self.options.bridge_students else None
        return None if bridged is None else (self.band(bridged[0]), bridged[1])

    def projects_at(self, rate: float) -> bool:
        """Whether the extraction at ``rate`` is the consistent projection of the magnitude
        masks: past the highest trained rate, with --beyond consistent and the global scope
        (--scope layer promises every tensor its own count, which a projection cannot keep)."""
        projected = self.options.beyond == "consistent" and self.spec.scope == "global"
        return projected and rate > max(self.spec.rates)

    def on_labels(self, labels: torch.Tensor) -> None:
        self._labels = labels

    def on_step(self, progress: float) -> None:
        super().on_step(progress)
        self.controller.bridge = self.bridge_band(self.current_rate)
        self._captured = None
        self._labels = None
        self._capturing = self.options.distill != "none"
        if self._capturing and self._hook is None:
            self._hook = self.model.register_forward_hook(self._capture)

    def loss(self) -> torch.Tensor | None:
        total = super().loss()
        if self._captured is None:
            return total
        x, teacher = self._captured
        self._captured = None
        target = torch.softmax(teacher, dim=-1)
        step_band, step_bridge = self.controller.q, self.controller.bridge
        try:
            for rate, weight in self.student_weights():
                self.controller.q = self.band(rate)
                self.controller.bridge = self.bridge_band(rate)
                if self.options.projected_students and self.projects_at(rate):
                    self.controller.fixed = self.compute_masks(rate)
                try:
                    student = torch.log_softmax(self.model(x), dim=-1)
                finally:
                    self.controller.fixed = None
                kd = (target * (torch.log(target.clamp(min=1e-12)) - student)).sum(-1).mean()
                w = self.options.student_labels
                if w > 0 and self._labels is not None:
                    kd = (1.0 - w) * kd + w * torch.nn.functional.nll_loss(student, self._labels)
                kd = kd if weight == 1.0 else weight * kd
                total = kd if total is None else total + kd
        finally:
            self.controller.q, self.controller.bridge = step_band, step_bridge
        return total
