"""The scheduling policy with simulated costs and a fake clock: deadline-aware batch choice, stale
drops, fairness, admission control, degradation and recovery. No model, no sleeping."""

from __future__ import annotations

import pytest

from streaming.admission import decide_admission
from streaming.baseline_policies import Fifo
from streaming.capacity import Demand, forecast, max_min_shares
from streaming.costs import CostModel
from streaming.degradation import DegradationPolicy
from streaming.scheduler import Batch, SloScheduler, StreamView
from streaming.simulate import SimPipeline, SimStream, simulate


def costs_of(**per_stream_s: float) -> CostModel:
    """A cost model that measured `pipeline` steps of 1 and 2 streams at the given cost each."""
    costs = CostModel()
    for pipeline, each in per_stream_s.items():
        costs.observe(pipeline, [()], each)
        costs.observe(pipeline, [(), ()], 2 * each)
    return costs


def view(session_id: str, pipeline: str = "sd", since: float | None = None, **kw) -> StreamView:
    return StreamView(session_id, pipeline, input_since=since, **kw)


# ---- one plan ---------------------------------------------------------------------------------


def test_ready_streams_of_a_pipeline_share_a_step_and_generators_tick_on_time():
    scheduler = SloScheduler(CostModel())
    streams = [view("a", since=5.9), view("b"), view("c", since=5.95), view("p", "pass", since=5.99),
               view("e", needs_input=False, next_due=5.0), view("f", needs_input=False, next_due=7.0)]
    plan = scheduler.schedule(streams, now=6.0)
    assert plan.batches == (Batch("sd", ("e", "a", "c")),)  # e's frame is due first, a and c join
    assert plan.wake_at == 7.0
    assert scheduler.schedule([s for s in streams if s.session_id != "p"], now=6.0).batches[0].session_ids == ("e", "a", "c")
    assert SloScheduler(CostModel(), max_batch=1).schedule(streams[:3], now=6.0).batches[0].session_ids == ("a",)


def test_a_ready_input_waits_briefly_for_its_batch_mates_but_not_past_its_deadline():
    scheduler = SloScheduler(costs_of(sd=0.04, other=0.001))
    streams = [view("a", since=5.995), view("b"), view("p", "other", since=5.995)]
    plan = scheduler.schedule(streams, now=6.0)
    assert plan.batches[0].pipeline == "other" and plan.wake_at == pytest.approx(6.005)  # b's frame is due soon
    assert scheduler.schedule(streams, now=6.006).batches[0].session_ids == ("a",)  # waited long enough
    urgent = [view("a", since=5.995, latency_budget_s=0.04), view("b")]
    assert scheduler.schedule(urgent, now=6.0).batches[0].session_ids == ("a",)  # no slack to wait


def test_the_batch_keeps_the_earliest_deadline_rather_than_taking_everyone():
    # Each stream costs 0.1 s of a step (a CPU): the urgent stream's deadline fits one stream only.
    scheduler = SloScheduler(costs_of(sd=0.1))
    streams = [view("relaxed1", since=0.0, latency_budget_s=1.0), view("urgent", since=0.0, latency_budget_s=0.15),
               view("relaxed2", since=0.0, latency_budget_s=1.0)]
    assert scheduler.schedule(streams, now=0.0).batches == (Batch("sd", ("urgent",)),)
    assert scheduler.schedule([streams[0], streams[2]], now=0.1).batches == (Batch("sd", ("relaxed1", "relaxed2")),)
    # On a GPU-like pipeline (the fixed part dominates), everyone fits in the urgent stream's step.
    gpu = CostModel()
    gpu.observe("sd", [()], 0.1)
    gpu.observe("sd", [(), (), ()], 0.102)
    assert len(SloScheduler(gpu).schedule(streams, now=0.0).batches[0].session_ids) == 3


def test_the_pipeline_with_the_earliest_deadline_goes_first():
    scheduler = SloScheduler(costs_of(sd=0.05, video=0.2))
    streams = [view("v", "video", since=0.0, latency_budget_s=2.0), view("s", "sd", since=0.01, latency_budget_s=0.2)]
    assert scheduler.schedule(streams, now=0.02).batches[0].pipeline == "sd"
    # The pipe's depth takes its share of the budget: 3 ticks at 10 fps leave 0.2 s of a 0.5 s budget.
    deep = view("d", since=0.0, latency_budget_s=0.5, pipe_depth=3, target_fps=10)
    assert deep.deadline() == pytest.approx(0.2)


def test_an_input_older_than_its_budget_is_dropped_and_counted():
    scheduler = SloScheduler(costs_of(sd=0.05))
    plan = scheduler.schedule([view("old", since=0.0, latency_budget_s=0.3), view("fresh", since=0.35)], now=0.4)
    assert plan.stale == ("old",) and plan.batches[0].session_ids == ("fresh",)
    # In a run: every frame offered is served, replaced in its slot, or dropped as stale.
    pipes = {"sd": SimPipeline(0.0, 0.05)}
    streams = [SimStream(f"s{i}", "sd", fps=8, latency_budget_s=0.1, start_s=i * 0.007) for i in range(4)]
    results = simulate(streams, pipes, SloScheduler(CostModel()), duration_s=5)
    assert sum(r.stale for r in results.values()) > 20
    for name, r in results.items():
        assert r.offered - 1 <= r.outputs + r.dropped + r.stale <= r.offered, name  # one may still wait


# ---- fairness ---------------------------------------------------------------------------------


def test_max_min_shares_fill_small_needs_first():
    assert max_min_shares({"a": 0.1, "b": 0.2}, 0.9) == {"a": 0.1, "b": 0.2}
    shares = max_min_shares({"light": 0.1, "mid": 0.5, "heavy": 3.0}, 0.9)
    assert shares["light"] == 0.1 and shares["mid"] == pytest.approx(0.4) and shares["heavy"] == pytest.approx(0.4)


def test_a_heavy_session_cannot_starve_light_ones():
    # One stream asks for 6x the worker (0.2 s steps at 30 fps), two light ones for 15% each.
    pipes = {"heavy": SimPipeline(0.0, 0.05), "light": SimPipeline(0.0, 0.005)}
    streams = [SimStream("heavy", "heavy", 30, 0.5, work=4), SimStream("l1", "light", 30, 0.2, start_s=0.003),
               SimStream("l2", "light", 30, 0.2, start_s=0.006)]
    fair = simulate(streams, pipes, SloScheduler(CostModel()), duration_s=20)
    plain = simulate(streams, pipes, Fifo(), duration_s=20)
    for light in ("l1", "l2"):
        assert plain[light].attainment < 0.1  # FIFO: the light streams barely get a frame through
        assert fair[light].attainment > 0.4   # steps are not preemptible: frames during a heavy step are lost
    # The heavy stream keeps about its max-min share of the compute (0.9 - 2 x 0.15), not all of it.
    assert 0.5 < fair["heavy"].compute_s / 20 < 0.8 and fair["heavy"].outputs > 0


# ---- admission --------------------------------------------------------------------------------


def test_admission_refuses_a_session_that_would_break_running_slos_and_says_what_would_fit():
    costs = costs_of(sd=0.01)  # 10 ms per stream per step: 30 fps costs 30% of the worker
    running = [Demand(f"s{i}", "sd", (), 30.0, 0.2) for i in range(2)]
    decision = decide_admission(running, Demand("new", "sd", (), 30.0, 0.2), costs)
    assert decision.admitted and decision.estimate.meets["new"]
    running.append(Demand("s2", "sd", (), 30.0, 0.2))
    decision = decide_admission(running, Demand("new", "sd", (), 30.0, 0.2), costs)
    assert not decision.admitted
    assert "3 running session(s) miss their SLO" in decision.reason and decision.max_fps < 5
    # Asking for more than its fair share harms nobody (the scheduler holds it to its share): it
    # is admitted and told what it will get.
    greedy = decide_admission(running[:2], Demand("new", "sd", (), 60.0, 0.2), costs)
    assert greedy.admitted and not greedy.estimate.meets["new"] and greedy.estimate.fps["new"] == pytest.approx(30.0)
    # A running session that needs more than an even split would lose: refused, with the rate that fits.
    big = [Demand("big", "sd", (), 60.0, 0.2)]
    refused = decide_admission(big, Demand("new", "sd", (), 60.0, 0.2), costs)
    assert not refused.admitted and refused.max_fps == pytest.approx(31.5, abs=1.5)
    assert f"at most {refused.max_fps:g}" in refused.reason


def test_admission_does_not_protect_sessions_that_already_miss_and_admits_unknown_costs():
    costs = costs_of(sd=0.05)
    hopeless = [Demand("fast", "sd", (), 240.0, 60.0)]  # needs 12x the worker on its own
    assert decide_admission(hopeless, Demand("new", "sd", (), 240.0, 60.0), costs).admitted
    assert decide_admission(hopeless, Demand("new", "never-measured", (), 30.0, 0.1), costs).admitted


def test_forecast_follows_batching_gains_of_fixed_cost_pipelines():
    gpu = CostModel()
    gpu.observe("sd", [(64, 64)], 0.020)
    gpu.observe("sd", [(64, 64)] * 4, 0.024)
    demands = [Demand(f"s{i}", "sd", (64, 64), 30.0, 0.2) for i in range(4)]
    plan = forecast(demands, gpu)
    assert plan.utilization == pytest.approx(0.024 * 30, rel=0.05) and all(plan.meets.values())


# ---- degradation ------------------------------------------------------------------------------


def test_quality_steps_down_under_load_and_back_up_when_it_falls():
    pipes = {"sd": SimPipeline(0.002, 0.01)}
    resident = SimStream("resident", "sd", 30, 0.3, work=1.0, levels=(0.5, 0.25))
    visitors = [SimStream(f"v{i}", "sd", 30, 0.3, start_s=5 + 0.01 * i, stop_s=15) for i in range(2)]
    costs = CostModel()
    results = simulate([resident, *visitors], pipes, SloScheduler(costs), duration_s=30, degradation=DegradationPolicy(costs))
    moves = results["resident"].level_changes
    downs = [t for t, d in moves if d == "down"]
    ups = [t for t, d in moves if d == "up"]
    assert downs and all(5 <= t < 15 for t in downs), moves      # only while the visitors load the worker
    assert ups and all(t >= 15 for t in ups) and len(ups) == len(downs), moves  # back to full quality after
    assert all(r.level_changes == [] for name, r in results.items() if name != "resident")  # they did not allow it


def test_degradation_holds_steady_under_constant_load():
    costs = CostModel()
    pipes = {"sd": SimPipeline(0.0, 0.012)}
    streams = [SimStream(f"s{i}", "sd", 30, 0.3, start_s=0.01 * i, levels=(0.5,)) for i in range(3)]
    results = simulate(streams, pipes, SloScheduler(costs), duration_s=30, degradation=DegradationPolicy(costs))
    for r in results.values():
        assert len(r.level_changes) <= 1, r.level_changes  # stepped down once at most, no oscillation
