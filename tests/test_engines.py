"""The distributed engines' shards, in one process: plain LARS never takes a norm from a shard
(each engine's kind is refused by name, with its recipe, before anything is written), a group
whose tensors were swapped behind it is refused, and ``LARSSGD`` is ``LARS(SGD(...))`` built
from a class and kwargs.
The engines themselves run in tests/test_distributed.py (gloo, 2 and 4 ranks) and
tests/test_deepspeed.py."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

from lars_npu import LARS, LARSSGD, exclude_bias_and_norm
from lars_npu._engines import refusal, shard_kind

from ._problem import make_net


def _grads(model: nn.Module, step: int) -> None:
    gen = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


# the attributes each engine leaves on a parameter (set by hand here: the engines run elsewhere)
ENGINE_MARKS = {
    "fsdp1_orig": ("_fsdp_flattened", True, ["FSDP1", "mark_fsdp1"]),
    "zero3": ("ds_id", 3, ["ZeRO stage 3", "stage 0"]),
    "zero12": ("_hp_mapping", object(), ["ZeRO stage 1/2", "stage 0"]),
}


@pytest.mark.parametrize("kind", sorted(ENGINE_MARKS))
@pytest.mark.parametrize("fused", [None, False])
def test_engine_shards_are_refused_at_construction_naming_the_recipe(kind, fused):
    attr, value, needles = ENGINE_MARKS[kind]
    model = make_net()
    setattr(model.fc1.weight, attr, value)
    assert shard_kind(model.fc1.weight) == kind
    inner = torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    before = copy.deepcopy(inner.param_groups[0]["weight_decay"])
    with pytest.raises(ValueError, match=r"LARS: parameter 'fc1\.weight'") as info:
        LARS(inner, fused=fused)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    assert (
        inner.param_groups[0]["weight_decay"] == before and "lars_mask" not in inner.param_groups[0]
    )


@pytest.mark.parametrize("kind", sorted(ENGINE_MARKS))
@pytest.mark.parametrize("fused", [None, False])
def test_a_parameter_that_becomes_a_shard_later_is_refused_at_the_step(kind, fused):
    """E.g. a model wrapped after the optimizer was built: the step looks again, writes nothing."""
    attr, value, _ = ENGINE_MARKS[kind]
    model = make_net()
    opt = LARS(torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9), fused=fused)
    w = model.fc1.weight
    setattr(w, attr, value)
    w.data = w.data.reshape(-1)[:10].clone()  # what a sharding engine does to the data
    _grads(model, 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"parameter 'fc1\.weight'"):
        opt.step()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert not opt.state


def test_flat_parameter_message_says_use_orig_params():
    text = refusal("fsdp1_flat", "_flat_param")
    assert "FlatParameter" in text and "use_orig_params=True" in text and "mark_fsdp1" in text


@pytest.mark.parametrize("fused", [None, False])
def test_swapped_tensors_of_another_shape_are_refused(fused):
    """DeepSpeed ZeRO 1/2 swap each group's parameters for one flat partition; with one group
    per parameter the count stays the same, and LARS used to take λ from the partition."""
    model = make_net()
    groups = [{"params": [(n, p)]} for n, p in model.named_parameters()]
    opt = LARS(torch.optim.SGD(groups, lr=0.1, momentum=0.9), fused=fused)
    opt2 = LARS(torch.optim.SGD(model.named_parameters(), lr=0.1), fused=fused)
    _grads(model, 0)
    opt.step()
    part = nn.Parameter(model.fc1.weight.detach().reshape(-1)[:12].clone())
    part.grad = torch.ones(12)
    opt.param_groups[0]["params"][0] = part
    before = part.detach().clone()
    with pytest.raises(ValueError, match=r"param_groups\[0\]'s tensors were replaced"):
        opt.step()
    assert torch.equal(part, before)
    # the original model parameter now carries DeepSpeed's mapping: the message names DeepSpeed
    model.fc1.weight._hp_mapping = object()
    with pytest.raises(ValueError, match="DeepSpeed ZeRO stage 1/2"):
        opt.step()
    # a different number of tensors in a group (ZeRO 1/2 with several parameters per group)
    opt2.param_groups[0]["params"] = [part]
    opt2.param_groups[0]["param_names"] = ["flat"]
    opt2.param_groups[0]["lars_mask"] = [True]
    with pytest.raises(ValueError, match="DeepSpeed ZeRO stage 1/2"):
        opt2.step()


def test_swapped_tensor_of_the_same_shape_is_followed():
    model = make_net()
    opt = LARS(torch.optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9))
    _grads(model, 0)
    opt.step()
    new = nn.Parameter(torch.randn(16, 6))
    new.grad = torch.randn(16, 6)
    opt.param_groups[0]["params"][0] = new
    before = new.detach().clone()
    opt.step()
    assert not torch.equal(new, before)


def test_larssgd_is_lars_around_sgd():
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    a, b = make_net(), make_net()
    opt_a = LARSSGD(a.named_parameters(), **kw, coefficient=0.02)
    opt_b = LARS(torch.optim.SGD(b.named_parameters(), **kw), coefficient=0.02)
    assert isinstance(opt_a, LARS) and isinstance(opt_a.optimizer, torch.optim.SGD)
    assert repr(opt_a).startswith("LARSSGD(") and "coefficient=0.02" in repr(opt_a)
    sch_a = torch.optim.lr_scheduler.StepLR(opt_a, 1, 0.5)
    sch_b = torch.optim.lr_scheduler.StepLR(opt_b, 1, 0.5)
    for step in range(3):
        _grads(a, step)
        _grads(b, step)
        opt_a.step()
        opt_b.step()
        sch_a.step()
        sch_b.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa.keys() == sb.keys() and sa["lars"] == sb["lars"]
    assert sa["param_groups"] == sb["param_groups"]
    # the checkpoint of one loads into the other
    c = make_net()
    opt_c = LARS(torch.optim.SGD(c.named_parameters(), **kw), coefficient=0.5)
    opt_c.load_state_dict(sa)
    assert opt_c.coefficient == 0.02


def test_larssgd_from_a_class_and_kwargs():
    """What factories do: ``cls(params, **config)``, with param groups and LARS's keywords."""
    model = make_net()
    config = {"lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "coefficient": 0.001,
              "lars_filter": exclude_bias_and_norm, "fused": False}  # fmt: skip
    groups = [
        {"params": list(model.fc1.parameters())},
        {"params": list(model.fc2.parameters()), "lr": 0.05},
    ]
    opt = LARSSGD(groups, **config)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.05]
    assert opt.param_groups[0]["lars_mask"] == [True, False]  # weight adapted, bias not
    with pytest.raises(TypeError, match=r"Adam|unexpected keyword"):
        LARSSGD(model.parameters(), betas=(0.9, 0.99))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="coefficient"):
        LARSSGD(model.parameters(), lr=0.1, coefficient=-1.0)


def test_zero_redundancy_optimizer_inside_lars_is_refused():
    from torch.distributed.optim import ZeroRedundancyOptimizer

    class FakeZero(torch.optim.SGD):  # the check is by class name: no process group needed
        pass

    FakeZero.__name__ = ZeroRedundancyOptimizer.__name__
    with pytest.raises(TypeError, match=r"optimizer_class=lars_npu\.LARSSGD"):
        LARS(FakeZero(make_net().parameters(), lr=0.1))


def test_hyper_parameters_travel_in_the_groups_too():
    """torch.distributed.checkpoint keeps only "state" and "param_groups": LARS's
    hyper-parameters ride in every group as well, so its get/set_state_dict carry them."""
    a = make_net()
    opt = LARS(torch.optim.SGD(a.named_parameters(), lr=0.1, momentum=0.9), coefficient=0.02,
               use_clip=True)  # fmt: skip
    _grads(a, 0)
    opt.step()
    sd = opt.state_dict()
    assert all(g["lars_coefficient"] == 0.02 and g["lars_use_clip"] for g in sd["param_groups"])
    dcp_like = {"state": sd["state"], "param_groups": sd["param_groups"]}
    b = make_net()
    opt_b = LARS(torch.optim.SGD(b.named_parameters(), lr=0.1, momentum=0.9), coefficient=0.5)
    opt_b.load_state_dict(dcp_like)
    assert opt_b.coefficient == 0.02 and opt_b.use_clip
    assert "lars_coefficient" not in opt_b.param_groups[0]  # taken out, not left in the groups
    c = make_net()
    groups = [{"params": list(c.fc1.parameters())}, {"params": list(c.fc2.parameters())}]
    opt_c = LARS(torch.optim.SGD(groups, lr=0.1), coefficient=0.02,
                 lars_filter=exclude_bias_and_norm)  # fmt: skip
    bad = opt_c.state_dict()
    del bad["lars"]
    bad["param_groups"][1]["lars_coefficient"] = 0.3
    with pytest.raises(ValueError, match="disagree"):
        opt_c.load_state_dict(bad)
    assert opt_c.coefficient == 0.02


def test_load_plans_every_group_before_loading():
    """The load path shared with ShardedLARS: a plain SGD checkpoint (no filter results in it)
    makes LARS run its filter on the groups as loaded; a filter that raises then leaves the
    optimizer as it was (it used to raise after the inner optimizer had loaded)."""
    calls = {"n": 0}

    def flaky(info):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyError(info.name)
        return True

    a = make_net()
    opt = LARS(torch.optim.SGD(list(a.named_parameters())[:2], lr=0.1, momentum=0.9),
               lars_filter=flaky)  # fmt: skip
    _grads(a, 0)
    opt.step()
    plain = torch.optim.SGD(list(a.named_parameters())[:2], lr=0.5, momentum=0.9)
    sd = plain.state_dict()
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(KeyError):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys()


def test_lars_built_like_an_optimizer_class_says_use_larssgd():
    """LARS wraps an optimizer: given parameters (as ZeroRedundancyOptimizer(optimizer_class=
    lars_npu.LARS) would), the message names the class that takes them; its signature is
    LARS's own, so a keyword of SGD's is Python's error naming it."""
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer.*use lars_npu\.LARSSGD"):
        LARS(list(make_net().parameters()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'lr'"):
        LARS(list(make_net().parameters()), lr=0.1)  # type: ignore[call-arg]
    params = list(inspect.signature(LARS).parameters)
    assert params[:5] == ["optimizer", "epsilon", "coefficient", "use_clip", "lars_filter"]
    assert inspect.signature(LARS).parameters["epsilon"].default == 1e-5
    assert "lr" in inspect.signature(LARSSGD).parameters


def test_filters_by_name_keep_functions_out_of_checkpoints():
    """ZeroRedundancyOptimizer stores its kwargs (lars_filter included) in its param groups, so
    a filter given as a function made the checkpoint unloadable with
    torch.load(weights_only=True). A filter by name is a string there."""
    import io

    m = make_net()
    opt = LARSSGD(m.named_parameters(), lr=0.1, lars_filter="exclude_bias_and_norm")
    assert opt.lars_filter is exclude_bias_and_norm
    assert opt.param_groups[0]["lars_mask"] == [True, False, False, False, True, False]
    with pytest.raises(ValueError, match=r"not a known filter name.*exclude_bias_and_norm"):
        LARSSGD(m.parameters(), lr=0.1, lars_filter="no_such_filter")
    buf = io.BytesIO()
    torch.save({"param_groups": [{"lars_filter": "exclude_bias_and_norm"}]}, buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)


def test_larssgd_on_sharded_parameters_takes_the_sharded_path():
    """Any LARS (LARSSGD too) on sharded parameters sums the norms over the ranks: without a
    process group there is nothing to sum over, a clear error."""
    model = make_net()
    model.fc1.weight._lars_global_shape = torch.Size([32, 6])  # a flat shard, marked
    with pytest.raises(RuntimeError, match=r"sharded parameters needs torch\.distributed"):
        LARSSGD(model.named_parameters(), lr=0.1)


def test_a_mask_lars_did_not_put_there_is_recomputed():
    """ZeroRedundancyOptimizer's load copies every group key into each rank's local optimizer,
    masks included, so a rank got another rank's filter results (by position: LARS on a bias,
    none on a weight). A mask LARS did not commit or load is not trusted."""
    m = make_net()
    opt = LARS(torch.optim.SGD(m.named_parameters(), lr=0.1, momentum=0.9),
               lars_filter=exclude_bias_and_norm)  # fmt: skip
    mine = opt.param_groups[0]["lars_mask"]
    assert mine == [True, False, False, False, True, False]
    opt.param_groups[0]["lars_mask"] = [False, True, True, True, False, True]  # another rank's
    _grads(m, 0)
    opt.step()
    assert opt.param_groups[0]["lars_mask"] == mine  # the filter ran again
    assert set(opt.trust_ratios()) == {"fc1.weight", "fc2.weight"}
    opt.param_groups[0]["lars_mask"][4] = False  # an in-place edit of LARS's own mask: followed
    _grads(m, 1)
    opt.step()
    assert set(opt.trust_ratios()) == {"fc1.weight"}


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("key", ["lr", "weight_decay", "momentum"])
def test_hyper_parameters_beyond_fp32_are_refused_by_name(fused, key):
    """An lr or weight decay of 1e39 turned the fp32 weights into inf on the cpu backend without
    an error (the AscendC backends refused them already)."""
    m = make_net()
    opt = LARS(torch.optim.SGD(m.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
               fused=fused)  # fmt: skip
    _grads(m, 0)
    opt.step()
    opt.param_groups[0][key] = 1e39
    _grads(m, 1)
    before = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(ValueError, match=rf"param_groups\[0\]\['{key}'\] must be <="):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, m.parameters(), strict=True))
