"""CTF (coarse-to-fine pruning): the four factors compose, annealing makes the masks crisp, the
budget term holds the budget, and compaction removes what the coarse factors zeroed."""

import pytest
import torch
from tiny_zoo import tiny_builders, tiny_gcn, tiny_model

from gcnshrink.compact import compact_model
from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import topology_summary
from gcnshrink.measure import count_flops
from gcnshrink.pruning import PruneSpec, bake, create_method
from gcnshrink.pruning.budget import global_budget
from gcnshrink.pruning.ctf import EntryLayout, removed_by_granularity

BUILDERS = tiny_builders(num_classes=5)
# the two architectures of the benchmark; every other zoo model is covered by the conformance
# suite (attach, train a step, exact rate), by the factor tests and by the compaction test
MAIN = [b for b in BUILDERS if b.__name__ in ("gcn", "stgcn")]


def ctf_on(model, rate=0.9, **options):
    method = create_method("ctf", PruneSpec((rate,)), options)
    method.attach(model, model.unit_graph())
    return method


class Adam:
    """Adam in a few lines: torch.optim's first use imports torch._dynamo (seconds)."""

    def __init__(self, params, lr):
        self.params, self.lr, self.t = list(params), lr, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, b1=0.9, b2=0.999):
        self.t += 1
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            step = (m / (1 - b1**self.t)) / ((v / (1 - b2**self.t)).sqrt() + 1e-8)
            p.sub_(self.lr * step)


def train_steps(model, method, steps, lr=1e-2, progress=lambda i: 0.0):
    """A few steps of the real hooks on random inputs: on_step, task loss + budget term, Adam."""
    optimizer = Adam(model.parameters(), lr=lr)
    x = model.example_input(8, 16)
    y = torch.arange(8) % 5
    for i in range(steps):
        method.on_step(progress(i))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        extra = method.loss()
        loss = loss + extra if extra is not None else loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def kept_count(masks):
    return sum(int(m.sum()) for m in masks.values())


def budget_of(masks, rate):
    return global_budget({n: m.numel() for n, m in masks.items()}, rate)


# ---------------------------------------------------------------------------- factors compose
@pytest.mark.parametrize("build", BUILDERS)
def test_the_mask_is_the_product_of_the_four_factors(build):
    """M_e = β_src(e) · β_dst(e) · ρ_row(e) · κ_col(e) · ε_e, checked entry by entry against the
    unit graph with random factor values."""
    model = build()
    graph = model.unit_graph()
    named = dict(model.named_parameters())
    layout = EntryLayout(
        graph, graph.prunable, {b.name: named[b.name].shape for b in graph.prunable}
    )
    gen = torch.Generator().manual_seed(0)
    entry = {n: torch.rand(named[n].numel(), generator=gen) for n in layout.names}
    rows = {n: torch.rand(layout.n_rows[n] + 1, generator=gen) for n in layout.names}
    cols = {n: torch.rand(layout.n_cols[n] + 1, generator=gen) for n in layout.names}
    channels = torch.rand(layout.n_channels + 1, generator=gen)
    masks = layout.compose(entry, rows, cols, channels)
    paired = {s for pair in graph.attention_pairs for s in pair}
    for b in graph.prunable:
        src, dst = graph.entry_units(b, named[b.name].shape)
        expected = entry[b.name].clone()
        if graph.space_by_name[b.target].role == "hidden" and b.target not in paired:
            expected *= rows[b.name][dst]
        if graph.space_by_name[b.source].role == "hidden":
            expected *= cols[b.name][src]
        for space, units in ((b.source, src), (b.target, dst)):
            if space in graph.derived:
                space, channel_of = graph.derived_source(space)
                units = channel_of[units]
            groups = [g for g in graph.unit_groups if space in g]
            if groups:
                first = sum(
                    graph.width(g[0])
                    for g in graph.unit_groups[: graph.unit_groups.index(groups[0])]
                )
                expected *= channels[first + units]
        assert torch.allclose(masks[b.name].reshape(-1), expected), b.name


@pytest.mark.parametrize("build", BUILDERS)
def test_a_zero_coarse_factor_zeroes_its_whole_group(build):
    """A channel's factor at 0 zeroes every entry into and out of the unit, in every tensor and
    every space of its coupled group (ST-GCN's interleaved rows and kernel taps, residual
    partners, the flattened columns of the FC layer); a row's (column's) factor at 0 zeroes that
    row (column) of its tensor only; elsewhere the mask is the entry factor."""
    model = build()
    method = ctf_on(model, 0.5)
    controller = method.controller
    graph = model.unit_graph()
    with torch.no_grad():
        entry, rows, cols, channels = controller.factors()[0]
        layout = method.layout
        # the widest coupled group, its unit 1 (a unit of every member space)
        group = max(graph.unit_groups, key=len)
        slot = layout.channel_offset[group[0]] + 1
        channels = channels.clone()
        channels[:-1] = 1.0
        channels[slot] = 0.0
        ones = {n: torch.ones_like(r) for n, r in rows.items()}
        ones_c = {n: torch.ones_like(c) for n, c in cols.items()}
        masks = layout.compose(entry, ones, ones_c, channels)
    touched = 0
    for b in graph.prunable:
        src, dst = graph.entry_units(b, masks[b.name].shape)
        hit = (layout.src_channel[b.name] == slot) | (layout.dst_channel[b.name] == slot)
        flat = masks[b.name].reshape(-1)
        assert bool((flat[hit] == 0).all()), b.name
        assert torch.equal(flat[~hit], entry[b.name][~hit]), b.name
        for space in group:  # every position bound to unit 1 of a member space is hit
            if b.target == space:
                assert bool(hit[dst == 1].all()), b.name
            if b.source == space:
                assert bool(hit[src == 1].all()), b.name
        touched += int(hit.sum())
    assert touched > 0
    # one row of one tensor: only that row
    name = next(n for n in layout.names if layout.row_count[n][:-1].sum() > 0)
    with torch.no_grad():
        row_factors = {n: torch.ones_like(r) for n, r in rows.items()}
        row_factors[name][0] = 0.0
        ones_ch = torch.ones_like(channels)
        masks = layout.compose(entry, row_factors, ones_c, ones_ch)
    for n in layout.names:
        in_row = (
            (layout.rows[n] == 0) if n == name else torch.zeros_like(layout.rows[n], dtype=bool)
        )
        flat = masks[n].reshape(-1)
        assert bool((flat[in_row] == 0).all()) and torch.equal(flat[~in_row], entry[n][~in_row])


# ---------------------------------------------------------------------------- the schedule
def test_annealing_makes_the_masks_binary_by_the_end():
    """With the paper's soft relaxation the masks start fractional; from ``crisp_at`` they are
    exactly 0/1, fixed, and what is delivered."""
    torch.manual_seed(0)
    model = tiny_gcn(0)
    method = ctf_on(model, 0.9, relaxation="soft", crisp_at=0.5)
    total = 20
    method.on_step(0.0)
    values = torch.cat([m.detach().reshape(-1) for m in method.controller.current.values()])
    fractional = ((values > 1e-3) & (values < 1 - 1e-3)).float().mean()
    assert fractional > 0.01
    train_steps(model, method, total, progress=lambda i: i / (total - 1))
    assert method.temperature_at(0.5) == pytest.approx(method.options.temperature_end)
    current = method.controller.current
    for name, m in current.items():
        assert bool(((m == 0) | (m == 1)).all()), name
    delivered = method.masks_at(0.9)
    assert all(torch.equal(delivered[n], current[n].bool()) for n in delivered)
    assert kept_count(delivered) == budget_of(delivered, 0.9)
    assert method.loss() is None  # crisp: no budget term, the masks are fixed


def test_the_relaxed_factors_sharpen_as_the_temperature_falls():
    model = tiny_gcn(0)
    method = ctf_on(model, 0.9, relaxation="soft")
    spreads = []
    for progress in (0.0, 0.35, 0.7):
        method.controller.temperature = method.temperature_at(progress)
        with torch.no_grad():
            entry, rows, cols, channels = method.controller.factors()[0]
        values = torch.cat([*entry.values(), *rows.values(), *cols.values(), channels])
        spreads.append(float(torch.minimum(values, 1 - values).mean()))  # 0 when binary
    assert spreads[0] > spreads[1] > spreads[2]


def test_budget_term_drives_the_trained_mask_to_the_budget():
    """Started far above the budget (entry thresholds halved: 2.4× the budget), the budget term
    alone brings the trained mask to the budget. Entries are its lever: the coarse factors
    compare each group with its tensor and with its own start, so a budget that shrinks every
    weight alike moves no group; so a third of the removed weights are left to entries here (the
    default gives them a twentieth)."""
    torch.manual_seed(0)
    model = tiny_gcn(0)
    method = ctf_on(model, 0.9, budget_weight=1.0, channel_share=0.6, line_share=0.05)
    controller = method.controller
    budget = method.target_budget
    for name in controller.entry_theta:
        controller.entry_theta[name] *= 0.5
    controller.compute()
    start = method.kept_count()
    assert start > 2 * budget
    optimizer = Adam(method.latent().values(), lr=2e-3)
    for _ in range(150):
        controller.compute()
        loss = method.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    controller.compute()
    end = method.kept_count()
    assert abs(end - budget) < 0.05 * budget, (start, end, budget)
    assert kept_count(method.masks_at(0.9)) == budget


# ---------------------------------------------------------------------------- the deliverable
@pytest.mark.parametrize("rate", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("build", MAIN)
def test_deliverable_is_exact_and_consistent(build, rate):
    model = build()
    method = ctf_on(model, rate)
    train_steps(model, method, 3)
    masks = method.masks_at(rate)
    assert kept_count(masks) == budget_of(masks, rate)
    assert topology_summary(model.unit_graph(), masks)["inconsistent_connections"] == 0


@pytest.mark.parametrize("build", MAIN)
def test_order_mass_is_exact_consistent_and_spends_the_cut_on_flops(build):
    """--order mass ranks channels by magnitude per FLOP: the deliverable is still exact and
    consistent, and the channels it cuts save more FLOPs than --order flops (whose LAMP
    reference protects the small, FLOP-heavy early layers)."""
    flops = {}
    for order in ("flops", "mass"):
        model = tiny_model(build.__name__, seed=0, num_classes=5)
        method = ctf_on(model, 0.9, order=order)
        masks = method.masks_at(0.9)
        assert kept_count(masks) == budget_of(masks, 0.9)
        assert topology_summary(model.unit_graph(), masks)["inconsistent_connections"] == 0
        baked = bake(model, masks).eval()
        flops[order] = count_flops(compact_model(baked, baked.example_input(4, 16)).model, 16)
    assert flops["mass"] < flops["flops"], flops


@pytest.mark.parametrize("build", MAIN)
def test_order_uniform_thins_every_group_at_the_same_pace(build):
    """--order uniform cuts the weakest channels of every coupled group at the same pace: the
    shares of channels the starting structure keeps differ between groups by at most a channel
    each, and the deliverable is exact and consistent."""
    model = tiny_model(build.__name__, seed=0, num_classes=5)
    method = ctf_on(model, 0.9, order="uniform", line_share=0.0)  # channels, then entries
    masks = method.masks_at(0.9)
    assert kept_count(masks) == budget_of(masks, 0.9)
    assert topology_summary(model.unit_graph(), masks)["inconsistent_connections"] == 0
    layout, structure = method.layout, method.allocation.structure
    touched = torch.zeros(layout.n_channels + 1, dtype=torch.bool)
    for name in layout.names:
        inside = structure[name].reshape(-1)
        touched[layout.src_channel[name][inside]] = True
        touched[layout.dst_channel[name][inside]] = True
    shares = []
    # a query/key dimension also dies with the channels it steers, so attention pairs are left out
    paired = {space for pair in model.unit_graph().attention_pairs for space in pair}
    for gi, group in enumerate(model.unit_graph().unit_groups):
        members = (layout.group_of_channel == gi) & (layout.channel_count[:-1] > 0)
        if int(members.sum()) >= 4 and not paired & set(group):
            shares.append((float(touched[:-1][members].float().mean()), int(members.sum())))
    assert len(shares) >= 3 and min(s for s, _ in shares) < 1.0, shares
    for share_a, size_a in shares:
        for share_b, size_b in shares:
            assert abs(share_a - share_b) <= 1.0 / size_a + 1.0 / size_b + 1e-9, shares


@pytest.mark.parametrize("build", BUILDERS)
def test_compaction_removes_every_zeroed_row_column_and_channel(build):
    """After bake, a unit with no kept entry entering it (and no signal link) or leaving it (and
    no link) is cut, and so is every unit of a channel with no kept entry; logits unchanged."""
    torch.manual_seed(0)
    model = build()
    method = ctf_on(model, 0.9)
    train_steps(model, method, 5)
    masks = method.masks_at(0.9)
    baked = bake(model, masks).eval()
    graph = baked.unit_graph()
    x = baked.example_input(6, 16)
    result = compact_model(baked, x)
    with torch.no_grad():
        assert torch.allclose(result.model(x), baked(x), rtol=1e-4, atol=1e-5)
    assert result.params_after < result.params_before
    paired = {s for pair in graph.attention_pairs for s in pair}
    named = dict(baked.named_parameters())

    def last_units(space):
        return result.spaces[space].kept_notes.get("last unit of the space", [])

    receives = {s.name: torch.zeros(s.width, dtype=torch.bool) for s in graph.spaces}
    sends = {s.name: torch.zeros(s.width, dtype=torch.bool) for s in graph.spaces}
    for b in graph.prunable:
        src, dst = graph.entry_units(b, named[b.name].shape)
        live = named[b.name].detach().reshape(-1) != 0
        receives[b.target][dst[live]] = True
        source, src_units = b.source, src
        if source in graph.derived:  # a flattened unit is its source channel
            source, channel_of = graph.derived_source(source)
            src_units = channel_of[src]
        sends[source][src_units[live]] = True
    checked = 0
    for group in graph.residual_groups:  # a residual chain receives and sends through any member
        roles = {graph.space_by_name[space].role for space in group}
        if roles != {"hidden"} or any(s in paired or s in graph.derived for s in group):
            continue  # joined to the input or output (never cut), attention, or derived
        inside = set(group)
        got = torch.stack([receives[space] for space in group]).any(dim=0)
        gave = torch.stack([sends[space] for space in group]).any(dim=0)
        for link in graph.links:  # links inside the group carry nothing in or out of it
            if link.source in inside and link.target in inside:
                continue
            if link.target in inside and link.semantics.carries_signal:
                got[link.target_units] = True
            if link.source in inside:
                gave[link.source_units] = True
        zeroed = ~got | ~gave
        for space in group:
            kept = result.kept[space].clone()
            kept[last_units(space)] = False  # a space never becomes empty (batch norms)
            assert not bool((kept & zeroed).any()), (space, torch.nonzero(kept & zeroed))
        checked += int(zeroed.sum())
    assert checked > 0
    # channels: a unit with no kept entry anywhere is gone from every space of its group
    layout = method.layout
    alive = torch.zeros(layout.n_channels + 1, dtype=torch.bool)
    for n in layout.names:
        live = masks[n].reshape(-1).cpu()
        alive[layout.src_channel[n][live]] = True
        alive[layout.dst_channel[n][live]] = True
    dead = torch.nonzero(~alive[:-1]).flatten()
    assert len(dead) > 0
    pinned = {  # joined to the input or output by an identity link: compaction never cuts them
        space
        for group in graph.residual_groups
        if any(graph.space_by_name[member].role != "hidden" for member in group)
        for space in group
    }
    # a query/key dimension whose scores reach no softmax (AAGCN's tanh topology) keeps the
    # constant its biases give every score unless that constant is exactly zero (compaction rule
    # 4: there is no score bias to fold it into), so a channel cut there stays when compacted
    unnormalised = {
        link.source
        for link in graph.links
        if link.semantics.steers and not link.semantics.normalised and link.source in paired
    }
    for members in graph.unit_groups:
        if pinned & set(members) or unnormalised & set(members):
            continue
        first = layout.channel_offset[members[0]]
        units = dead[(dead >= first) & (dead < first + graph.width(members[0]))] - first
        for space in members:
            kept = result.kept[space].clone()
            kept[last_units(space)] = False
            assert not bool(kept[units].any()), space


def test_allocation_follows_the_shares():
    """More channel share: more of the removed weights go with whole channels, and the compacted
    model is smaller; the budget is met either way."""
    removed_share, compacted = [], []
    for share in (0.0, 0.8):
        model = tiny_model("stgcn")
        method = ctf_on(model, 0.9, channel_share=share, line_share=0.0)
        masks = method.masks_at(0.9)
        assert kept_count(masks) == budget_of(masks, 0.9)
        removed_share.append(
            removed_by_granularity(model.unit_graph(), masks)["shares"]["channels"]
        )
        baked = bake(model, masks).eval()
        compacted.append(compact_model(baked, baked.example_input(4, 16)).params_after)
    assert removed_share[1] > removed_share[0] + 0.3
    assert compacted[1] < compacted[0]


def test_state_round_trip_gives_the_same_masks():
    torch.manual_seed(0)
    model = tiny_gcn(0)
    method = ctf_on(model, 0.9)
    train_steps(model, method, 4)
    expected = method.masks_at(0.9)
    state = method.state_dict()
    again = tiny_gcn(0)
    again.load_state_dict({k: v for k, v in model.state_dict().items()}, strict=False)
    fresh = ctf_on(again, 0.9)
    with torch.no_grad():
        for name, w in method.latent().items():
            fresh.latent()[name].copy_(w)
    fresh.load_state_dict(state)
    got = fresh.masks_at(0.9)
    assert all(torch.equal(got[n], expected[n]) for n in expected)


# ---------------------------------------------------------------------------- options, reporting
def test_bad_options_and_layer_scope_are_refused():
    with pytest.raises(GcnshrinkError, match="at most 1"):
        create_method("ctf", PruneSpec((0.9,)), {"channel_share": 0.8, "line_share": 0.5})
    with pytest.raises(GcnshrinkError, match="crisp-at"):
        create_method("ctf", PruneSpec((0.9,)), {"crisp_at": 0.0})
    with pytest.raises(GcnshrinkError, match="relaxation"):
        create_method("ctf", PruneSpec((0.9,)), {"relaxation": "hard"})
    with pytest.raises(GcnshrinkError, match="scope global"):
        create_method("ctf", PruneSpec((0.9,), scope="layer"))


def test_removed_weights_split_by_granularity():
    model = tiny_gcn(0)
    graph = model.unit_graph()
    named = dict(model.named_parameters())
    masks = {b.name: torch.ones_like(named[b.name], dtype=torch.bool) for b in graph.prunable}
    masks["blocks.0.value.weight"][3, :] = False  # row 3 of the value (output unit 3 gets nothing)
    masks["blocks.1.query.weight"][:, 5] = False  # column 5 of one consumer
    masks["classifier.weight"][0, 0] = False  # one entry
    # channel 7 of block 0's output: its value row and its columns in block 1
    masks["blocks.0.value.weight"][7, :] = False
    for n in ("query", "key", "value"):
        masks[f"blocks.1.{n}.weight"][:, 7] = False
    report = removed_by_granularity(graph, masks)
    in_width = named["blocks.0.value.weight"].shape[1]
    out_width = (
        named["blocks.1.query.weight"].shape[0] * 2 + named["blocks.1.value.weight"].shape[0]
    )
    assert report["counts"] == {
        "channels": in_width + out_width,
        "rows": in_width,
        "columns": named["blocks.1.query.weight"].shape[0],
        "entries": 1,
    }
    assert sum(report["shares"].values()) == pytest.approx(1.0)


def test_inspect_reports_the_split_and_prune_has_the_flags(cli, tmp_path):
    import json

    from gcnshrink.checkpoint import Checkpoint, save_checkpoint
    from gcnshrink.pruning import option_table

    model = tiny_gcn(0)
    method = ctf_on(model, 0.9)
    masks = method.masks_at(0.9)
    baked = bake(model, masks)
    path = tmp_path / "ctf.pt"
    names = [f"c{i}" for i in range(5)]
    save_checkpoint(Checkpoint.from_model(baked, names, {"data": "synthetic:hands"}), path)
    result = cli("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    shares = json.loads(result.stdout)["removed_by"]
    expected = removed_by_granularity(model.unit_graph(), masks)["shares"]
    assert shares == pytest.approx(expected)
    assert sum(shares.values()) == pytest.approx(1.0) and shares["channels"] > 0.5
    text = cli("inspect", path).stdout
    line = next(x for x in text.splitlines() if "removed: ch/row/col/entry" in x)
    assert line.split("entry: ", 1)[1].split(" / ") == [
        f"{100 * shares[g]:.0f} %" for g in ("channels", "rows", "columns", "entries")
    ]
    flags = {o.flag for o in option_table() if "ctf" in o.methods}
    assert {"--channel-share", "--line-share", "--order", "--margin", "--crisp-at"} <= flags


# ---------------------------------------------------------------------------- batch norm
def test_the_shipped_model_has_the_batchnorm_statistics_of_its_own_network():
    """ctf's channels come and go during the fine-tune, so the training loop recomputes the batch
    norm statistics of the delivered network before it scores an epoch: what is shipped carries
    the statistics of the shipped network (recomputing them changes nothing), not a running
    average over the networks the fine-tune passed through."""
    import copy

    from gcnshrink import api
    from gcnshrink.data import load_data
    from gcnshrink.train import TrainConfig, recalibrate_batchnorm

    data = load_data("synthetic:sbu?train=64&test=32")
    config = TrainConfig(epochs=1, progress=False)
    # no dropout: the statistics are gathered in training mode, where dropout draws at random
    stgcn = {"base_width": 4, "dropout": 0.0}
    dense, _ = api.train(data, "stgcn", config=config, model_config=stgcn)
    outcome = api.prune(
        dense, data, method="ctf", rate=0.7, epochs=3, progress=False, allow_collapse=True
    )
    shipped = outcome.model
    again = copy.deepcopy(shipped)
    assert recalibrate_batchnorm(again, data.x_train)
    norms = [n for n, m in shipped.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    for name, buffer in shipped.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            assert torch.allclose(buffer, again.get_buffer(name), rtol=1e-4, atol=1e-6), name
