import math

import eelib._util.energy

import pytest
import torch

from eelib.vision.cost import count_flops, energy_estimate, exit_costs, latency_per_exit
from eelib.vision.dynamic import dynamic_inference, route
from eelib.vision.exits import EarlyExitNet, torchvision_early_exit
from eelib.policies import ExitPolicy, apply_policy, confidence
from eelib.vision.resnet import resnet


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = EarlyExitNet(resnet(14, width=4), ("stem", "layer1", "layer2.0"), pool_size=2).eval()
    for fc in [h.fc for h in net.heads] + [net.backbone.fc]:
        torch.nn.init.normal_(fc.weight, std=3.0)  # varied predictions from an untrained network
    return net


def test_costs_are_counted_by_flop_counter(model):
    c = exit_costs(model, (1, 16, 16))
    x = torch.zeros(1, 1, 16, 16)
    assert c.full_flops == count_flops(model.backbone, x) > 0
    assert c.backbone_flops[-1] + c.head_flops[-1] == c.full_flops
    assert c.flops[-1] == c.full_flops + sum(c.head_flops[:-1])  # every early head was evaluated on the way
    assert all(a < b for a, b in zip(c.flops, c.flops[1:]))
    for k in range(model.num_exits):  # exit k alone = backbone up to it + its own head
        assert count_flops(model.forward_until, x, k) == c.backbone_flops[k] + c.head_flops[k]
    # the first conv of the stem: 2 FLOPs per multiply-accumulate, 16x16 outputs, 4 channels, 1x3x3 kernel
    assert c.backbone_flops[0] == 2 * 16 * 16 * 4 * 9
    assert c.params[-1] == c.full_params + sum(sum(p.numel() for p in h.parameters()) for h in model.heads)
    assert exit_costs(model, (1, 16, 16)) is c  # cached
    assert len(c.rows()) == 4 and c.relative_flops[-1] > 1
    with pytest.raises(ValueError, match="input_shape must be"):
        exit_costs(model, (3, 16, 16))


def separated_thresholds(scores, measure):
    """Thresholds half-way between two neighbouring scores: no sample sits on a threshold."""
    if measure == "patience":
        return (2.0, 2.0, 2.0)  # leave once two consecutive exits agree
    out = []
    for s in scores[:-1]:
        v = s.sort().values
        i = len(v) * 2 // 3
        out.append(float((v[i] + v[i + 1]) / 2))
    return tuple(out)


@pytest.mark.parametrize("measure", ["max_prob", "entropy", "margin", "patience"])
def test_dynamic_inference_matches_the_simulated_policy(model, measure):
    torch.manual_seed(1)
    x = torch.randn(64, 1, 16, 16, dtype=torch.float64)
    m = model.double()
    try:
        with torch.no_grad():
            logits = torch.stack(m(x))
        policy = ExitPolicy(measure, separated_thresholds(confidence(logits, measure), measure))
        simulated = apply_policy(policy, logits)
        assert len(simulated.exits.unique()) >= 2  # the policy really splits the batch
        result = dynamic_inference(policy, m, x)
        assert torch.equal(result.exits, simulated.exits)
        assert torch.equal(result.predictions, simulated.predictions)
        costs = exit_costs(m, (1, 16, 16))
        assert result.flops == sum(costs.flops[k] for k in simulated.exits.tolist())
        assert count_flops(route, policy, m, x) == result.flops  # what was really computed
    finally:
        model.float()


def test_samples_that_left_skip_the_later_blocks(model):
    x = torch.randn(32, 1, 16, 16)
    with torch.no_grad():
        scores = confidence(torch.stack(model(x)), "max_prob")
    policy = ExitPolicy("max_prob", (float(scores[0].median()), 1.0, 1.0))
    seen = []
    hook = model.backbone.layer3[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    try:
        result = dynamic_inference(policy, model, x)
    finally:
        hook.remove()
    left_early = int((result.exits < 3).sum())
    assert 0 < left_early < 32 and seen == [32 - left_early]


def test_never_and_always_exit(model):
    x = torch.randn(8, 1, 16, 16)
    never = dynamic_inference(ExitPolicy.never_exit(4), model, x)
    with torch.no_grad():
        assert never.exits.tolist() == [3] * 8 and torch.equal(never.predictions, model.backbone(x).argmax(1))
    always = dynamic_inference(ExitPolicy("max_prob", (0.1, 0.1, 0.1)), model, x)
    assert always.exits.tolist() == [0] * 8
    assert always.flops == 8 * exit_costs(model, (1, 16, 16)).flops[0]


def test_dynamic_inference_bad_input(model):
    with pytest.raises(ValueError, match="thresholds has 2 values but the model has 4 exits"):
        dynamic_inference(ExitPolicy("max_prob", (0.5, 0.5)), model, torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="3 channels"):
        dynamic_inference(ExitPolicy("max_prob", (0.5, 0.5, 0.5)), model, torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="outside the range of margin"):
        dynamic_inference(ExitPolicy("margin", (0.5, 0.5, 2.0)), model, torch.randn(2, 1, 16, 16))


def test_torchvision_model_routes_too():
    torch.manual_seed(0)
    tv = torchvision_early_exit("resnet18", points=("layer1", "layer2"), num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = torch.stack(tv(x))
    policy = ExitPolicy("max_prob", (0.1, 1.0))
    result = dynamic_inference(policy, tv, x)
    assert result.exits.tolist() == [0] * 4 and torch.equal(result.predictions, apply_policy(policy, logits).predictions)
    assert exit_costs(tv, (3, 32, 32)).full_flops == count_flops(tv.backbone, torch.zeros(1, 3, 32, 32))


def test_latency_and_energy(model):
    seconds = latency_per_exit(model, torch.randn(2, 1, 16, 16), repeats=2, warmup=1)
    assert len(seconds) == 4 and all(math.isfinite(s) for s in seconds)
    assert energy_estimate(1e9) == pytest.approx(2.3e-3)
    with pytest.raises(ValueError, match="flops must be >= 0"):
        energy_estimate(-1)


def test_torchvision_stem_parameters_are_counted():
    tv = torchvision_early_exit("resnet18", points=("layer1",), num_classes=10)
    c = exit_costs(tv, (3, 32, 32))
    stem = sum(p.numel() for m in (tv.backbone.conv1, tv.backbone.bn1) for p in m.parameters())
    layer1 = sum(p.numel() for p in tv.backbone.layer1.parameters())
    assert c.params[0] == stem + layer1 + sum(p.numel() for p in tv.heads[0].parameters())
    assert c.params[-1] == c.full_params + sum(p.numel() for p in tv.heads[0].parameters())
    assert list(tv.state_dict()) == [f"backbone.{k}" for k in tv.backbone.state_dict()] + [
        f"heads.{k}" for k in tv.heads.state_dict()]  # the stem's wrapper adds no key


def test_routing_needs_eval_mode_and_speedup_is_measured(model):
    from eelib.vision.dynamic import measure_speedup

    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            route(ExitPolicy("max_prob", (0.5, 0.5, 0.5)), model, torch.randn(2, 1, 16, 16))
        result = dynamic_inference(ExitPolicy("max_prob", (0.5, 0.5, 0.5)), model, torch.randn(2, 1, 16, 16))
        assert model.training and len(result.exits) == 2  # dynamic_inference switches to eval and back
    finally:
        model.eval()
    s = measure_speedup(ExitPolicy("max_prob", (0.1, 0.1, 0.1)), model, torch.randn(8, 1, 16, 16), batch_size=4, repeats=1)
    assert s.ideal_speedup == pytest.approx(exit_costs(model, (1, 16, 16)).full_flops / exit_costs(model, (1, 16, 16)).flops[0])
    with pytest.raises(ValueError, match="batch_size"):
        measure_speedup(ExitPolicy("max_prob", (0.1, 0.1, 0.1)), model, torch.randn(8, 1, 16, 16), batch_size=0)


class FakeClock:
    """A perf_counter that moves only when the code under test says work was done."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_measure_speedup_times_each_run_and_keeps_the_fastest(model, monkeypatch):
    """A fake clock: the full network costs 1 per image, routing 0.2 (0.3 on the first pass), never-exit
    routing 1.1; the measured figures must be exactly those sums, the fastest pass of each."""
    import eelib._util.device
    from eelib.vision import dynamic

    clock = FakeClock()
    monkeypatch.setattr(eelib._util.timing.time, "perf_counter", clock)
    passes = {"dynamic": 0}
    real_route = dynamic.route

    def route(policy, m, x):
        never = math.isinf(policy.thresholds[0])
        passes["dynamic"] += not never
        clock.now += len(x) * (1.1 if never else 0.3 if passes["dynamic"] <= 4 else 0.2)  # 2 warm-up + 2 batches
        return real_route(policy, m, x)

    def backbone(x):
        clock.now += len(x) * 1.0
        return torch.zeros(len(x), model.num_classes)

    monkeypatch.setattr(dynamic, "route", route)
    monkeypatch.setattr(model.backbone, "forward", backbone)
    s = dynamic.measure_speedup(ExitPolicy("max_prob", (0.1, 0.1, 0.1)), model, torch.randn(8, 1, 16, 16), batch_size=4, repeats=3)
    assert s.full_seconds == pytest.approx(8.0) and s.never_exit_seconds == pytest.approx(8.8)
    assert s.dynamic_seconds == pytest.approx(1.6)  # the first timed pass (0.3 per image) was slower: not kept
    assert s.speedup == pytest.approx(5.0) and s.overhead == pytest.approx(0.1)


def test_latency_per_exit_times_each_exit_alone(model, monkeypatch):
    import eelib._util.device

    clock = FakeClock()
    monkeypatch.setattr(eelib._util.timing.time, "perf_counter", clock)
    real = model.forward_until

    def forward_until(x, k):
        clock.now += k + 1
        return real(x, k)

    def backbone(x):
        clock.now += 10
        return torch.zeros(len(x), model.num_classes)

    monkeypatch.setattr(model, "forward_until", forward_until)
    monkeypatch.setattr(model.backbone, "forward", backbone)
    assert latency_per_exit(model, torch.randn(2, 1, 16, 16), repeats=3, warmup=1) == [1, 2, 3, 10]


def test_exit_timings_repeat_until_the_runs_agree_and_check_every_pair(model, monkeypatch):
    """A fake clock and a fake load: the first two rounds disturbed (the final exit slower than the
    earlier ones, as on a busy laptop), then steady; timing goes on until the runs agree."""
    import eelib._util.timing
    from eelib._util.load import MachineLoad
    from eelib.vision.cost import exit_timings

    clock = FakeClock()
    monkeypatch.setattr(eelib._util.timing.time, "perf_counter", clock)
    monkeypatch.setattr(eelib._util.timing, "machine_load", lambda: MachineLoad(2, 0.1, "fake"))
    real = model.forward_until
    calls = {"n": 0}

    def forward_until(x, k):
        calls["n"] += 1
        clock.now += (k + 1) * (5 if calls["n"] <= 3 + 3 * 2 else 1)  # 3 exits: warm-up (1 each), 2 slow rounds
        return real(x, k)

    def backbone(x):
        clock.now += 10
        return torch.zeros(len(x), model.num_classes)

    monkeypatch.setattr(model, "forward_until", forward_until)
    monkeypatch.setattr(model.backbone, "forward", backbone)
    t = exit_timings(model, torch.randn(2, 1, 16, 16), min_repeats=3, tolerance=0.05, budget=1e6, warmup=1)
    assert list(t.runs) == list(model.exit_names)
    assert t.runs["layer1"] == (10, 10, 2, 2, 2) and t.runs[model.exit_names[-1]] == (10,) * 5  # settled at round 5
    assert t.settled and t.trusted and t.order(model.exit_names).holds
    assert [t.fastest(name) for name in model.exit_names] == [1, 2, 3, 10]


def test_measure_speedup_with_a_budget_goes_on_until_the_passes_agree(model, monkeypatch):
    import eelib._util.timing
    from eelib._util.load import MachineLoad
    from eelib.vision import dynamic

    clock = FakeClock()
    monkeypatch.setattr(eelib._util.timing.time, "perf_counter", clock)
    monkeypatch.setattr(eelib._util.timing, "machine_load", lambda: MachineLoad(2, 1.0, "fake"))
    passes = {"full": 0}

    def backbone(x):
        passes["full"] += 1
        slow = passes["full"] in (3, 4, 7, 8)  # after 2 warm-up calls: rounds 1 and 3 disturbed
        clock.now += len(x) * (3.0 if slow else 1.0)
        return torch.zeros(len(x), model.num_classes)

    monkeypatch.setattr(model.backbone, "forward", backbone)
    policy = ExitPolicy("max_prob", (0.1, 0.1, 0.1))
    x = torch.randn(8, 1, 16, 16)
    s = dynamic.measure_speedup(policy, model, x, batch_size=4, repeats=3)  # no budget: exactly 3 rounds
    assert s.timings.runs["full"] == pytest.approx((24, 8, 24)) and s.full_seconds == pytest.approx(8.0)
    assert not s.timings.settled
    passes["full"] = 0
    s = dynamic.measure_speedup(policy, model, x, batch_size=4, repeats=3, budget=1e6)
    assert s.timings.runs["full"] == pytest.approx((24, 8, 24, 8, 8))  # 3 of 5 at 8: the median is the fastest
    assert s.full_seconds == pytest.approx(8.0) and s.timings.settled
    assert not s.timings.trusted and "1.00 of 2 CPUs busy" in s.timings.warning


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_images_are_refused_by_name(model, bad):
    from eelib.vision.dynamic import measure_speedup

    x = torch.randn(3, 1, 16, 16)
    x[1, 0, 4, 4] = bad
    with pytest.raises(ValueError, match=r"^x holds 1 non-finite value"):
        dynamic_inference(ExitPolicy("max_prob", (0.5, 0.5, 0.5)), model, x)
    with pytest.raises(ValueError, match=r"^images holds 1 non-finite value"):
        measure_speedup(ExitPolicy("max_prob", (0.5, 0.5, 0.5)), model, x, batch_size=2)


def test_folded_heads_compute_the_pooled_heads_logits():
    from eelib.vision.exits import ExitHead

    torch.manual_seed(0)
    for pool, shape in [(4, (16, 28, 28)), (4, (32, 14, 14)), (4, (64, 7, 7)), (2, (8, 5, 3)), (1, (8, 4, 4))]:
        head = ExitHead(shape[0], 10, pool_size=pool).eval()
        x = torch.randn(5, *shape)
        pooled = head(x)  # gradients on: the pooling itself
        with torch.no_grad():
            folded = head(x)
            assert head.folded_weight(shape) is not None
        torch.testing.assert_close(folded, pooled, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # weights changed in place: the folded weight follows
        head.fc.weight.mul_(2)
        torch.testing.assert_close(head(x), 2 * pooled - head.fc.bias)
    big = ExitHead(64, 1000).eval()  # a 1000-class head: pooling first is cheaper, nothing folded
    assert big.folded_weight((64, 56, 56)) is None


def _fake_rapl(root, packages=(("intel-rapl:0", 1_000_000, 10_000_000),)):
    for name, energy, top in packages:
        zone = root / name
        zone.mkdir(parents=True)
        (zone / "energy_uj").write_text(str(energy))
        (zone / "max_energy_range_uj").write_text(str(top))
    (root / "intel-rapl:0:0").mkdir()  # a subzone (core): not counted again


def test_measured_energy_from_rapl_counters_with_wraparound(tmp_path, monkeypatch):
    from eelib.vision import cost

    _fake_rapl(tmp_path, (("intel-rapl:0", 9_000_000, 10_000_000), ("intel-rapl:1", 100, 10_000_000)))
    monkeypatch.setattr(eelib._util.energy, "RAPL_ROOT", tmp_path)
    calls = []

    def work():  # each call "uses" 0.5 J on package 0 (wrapping past its range) and 0.25 J on package 1
        calls.append(1)
        for name, step in (("intel-rapl:0", 500_000), ("intel-rapl:1", 250_000)):
            f = tmp_path / name / "energy_uj"
            f.write_text(str((int(f.read_text()) + step) % 10_000_000))

    joules = cost.measure_energy(work, "cpu", repeats=4)
    assert len(calls) == 5  # one warm-up and four measured
    assert joules == pytest.approx(0.75)


def test_measured_energy_says_why_it_is_unavailable(tmp_path, monkeypatch):
    from eelib.vision import cost

    monkeypatch.setattr(eelib._util.energy, "RAPL_ROOT", tmp_path / "none")
    with pytest.raises(cost.EnergyUnavailable, match="no RAPL counters"):
        cost.measure_energy(lambda: None, "cpu")
    _fake_rapl(tmp_path / "locked")
    (tmp_path / "locked" / "intel-rapl:0" / "energy_uj").write_text("not a number")
    monkeypatch.setattr(eelib._util.energy, "RAPL_ROOT", tmp_path / "locked")
    with pytest.raises(cost.EnergyUnavailable, match="cannot be read"):
        cost.energy_counter("cpu")
    with pytest.raises(cost.EnergyUnavailable, match="'meta'"):
        cost.energy_counter("meta")
    with pytest.raises(ValueError, match="repeats"):
        cost.measure_energy(lambda: None, "cpu", repeats=0)


def test_a_replaced_head_is_routed_and_counted():
    """Issue 26: the routing plan and the FLOP counts follow ``model.heads[k] = new_head`` (they were
    cached with the old head: routing kept using it, its FLOPs stayed those of the old head)."""
    from eelib.vision.exits import ExitHead

    torch.manual_seed(0)
    ee = EarlyExitNet(resnet(8, width=4), ("stem", "layer1")).eval()
    x = torch.randn(64, 1, 12, 12)
    old_costs = exit_costs(ee, (1, 12, 12))
    dynamic_inference(ExitPolicy("max_prob", (0.5, 0.5)), ee, x)  # the plan and the counts are cached now
    ee.heads[0] = ExitHead(4, 10, hidden_channels=16).eval()
    with torch.no_grad():
        ee.heads[0].fc.weight.mul_(30)
        median = float(torch.softmax(ee.forward_until(x, 0), -1).amax(-1).median())
        policy = ExitPolicy("max_prob", (median, 1.0))  # about half the samples leave at the new head
        expected = apply_policy(policy, torch.stack(ee(x)))
    result = dynamic_inference(policy, ee, x)
    assert 0 < int((expected.exits == 0).sum()) < len(x)
    assert torch.equal(result.exits, expected.exits) and torch.equal(result.predictions, expected.predictions)
    costs = exit_costs(ee, (1, 12, 12))
    features = ee.segment(0, torch.zeros(1, 1, 12, 12))
    assert costs.head_flops[0] == count_flops(ee.head, 0, features) > old_costs.head_flops[0]
    assert costs.head_flops[1:] == old_costs.head_flops[1:]
    assert result.flops == sum(costs.flops[k] for k in result.exits.tolist())
