"""pi-Tuning step 2: Fisher task embeddings, Task2Vec similarity, helper-task selection (CPU, analytic references)."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
from peft_core.tuners.pituning import (
    FisherEmbedding,
    compute_fisher,
    fisher_report,
    select_helper_tasks,
    similarity_matrix,
    task_similarity,
)
from scipy.spatial import distance
from torch import nn

# ---------------------------------------------------------------------------------------------------------- models


class LinearGaussian(nn.Module):
    """y ~ N(w . x, 1); per-sample loss 0.5 (y - w . x)^2, per-sample gradient (w . x - y) x."""

    def __init__(self, w: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def gaussian_losses(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return 0.5 * (y - model(x)) ** 2


def gaussian_summed(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return gaussian_losses(model, batch).sum()


def batched(x: torch.Tensor, y: torch.Tensor, bs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]


class Logistic(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(d, 1, dtype=torch.float64)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))
            self.lin.bias.fill_(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).squeeze(-1)


def bce_losses(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.binary_cross_entropy_with_logits(model(x), y, reduction="none")


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.frozen = nn.Linear(4, 8)
        self.frozen.requires_grad_(False)
        self.adapter = nn.Linear(8, 3)
        self.drop = nn.Dropout(0.5)
        self.unused = nn.Linear(2, 2)  # never in the graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.drop(torch.relu(self.frozen(x))))


def ce_summed(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="sum")


def adapter_params(model: Mlp) -> dict[str, nn.Parameter]:
    return {f"adapter.{n}": p for n, p in model.adapter.named_parameters()}


def mlp_batches(n: int = 5, bs: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(bs, 4, generator=g), torch.randint(0, 3, (bs,), generator=g)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- analytic Fisher


def test_linear_gaussian_hand_computed() -> None:
    # w = 2, x = [1, 2, 3], y = [1, 1, 1]: residuals w x - y = [1, 3, 5], per-sample gradients r x = [1, 6, 15].
    model = LinearGaussian([2.0])
    x, y = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    data = batched(x, y, bs=2)  # batches {0, 1} and {2}: a ragged last batch
    per_sample = compute_fisher(model, data, gaussian_losses, mode="per_sample", progress=False)
    assert per_sample["w"].tolist() == pytest.approx([(1 + 36 + 225) / 3])
    per_batch = compute_fisher(model, data, gaussian_summed, mode="per_batch", progress=False)
    assert per_batch["w"].tolist() == pytest.approx([((1 + 6) ** 2 + 15**2) / 3])  # N = samples seen, not 2 * 2
    assert per_batch.num_samples == per_sample.num_samples == 3
    assert per_batch.mode == "per_batch" and per_sample.mode == "per_sample"
    assert per_batch.extra["num_batches"] == 2


@pytest.mark.parametrize("bs", [1, 4, 7])
def test_linear_gaussian_closed_form(bs: int) -> None:
    g = torch.Generator().manual_seed(0)
    d, n = 5, 23
    model = LinearGaussian(torch.randn(d, generator=g, dtype=torch.float64).tolist())
    x, y = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    xn, yn, wn = x.numpy(), y.numpy(), model.w.detach().numpy()
    grads = (xn @ wn - yn)[:, None] * xn  # (n, d) per-sample gradients
    expected_sample = (grads**2).mean(0)
    expected_batch = sum(grads[i : i + bs].sum(0) ** 2 for i in range(0, n, bs)) / n

    data = batched(x, y, bs)
    got_sample = compute_fisher(model, data, gaussian_losses, mode="per_sample", progress=False)["w"]
    got_batch = compute_fisher(model, data, gaussian_summed, mode="per_batch", progress=False)["w"]
    got_batch_vec = compute_fisher(model, data, gaussian_losses, mode="per_batch", progress=False)["w"]
    assert got_sample.dtype == torch.float32
    np.testing.assert_allclose(got_sample.numpy(), expected_sample, rtol=1e-6)
    np.testing.assert_allclose(got_batch.numpy(), expected_batch, rtol=1e-6)
    np.testing.assert_array_equal(got_batch.numpy(), got_batch_vec.numpy())
    if bs == 1:
        np.testing.assert_allclose(got_batch.numpy(), got_sample.numpy(), rtol=1e-6)


def test_logistic_regression_closed_form() -> None:
    g = torch.Generator().manual_seed(3)
    n, d = 17, 3
    model = Logistic(d)
    x, y = torch.randn(n, d, generator=g, dtype=torch.float64), (torch.rand(n, generator=g) > 0.5).double()
    w, b = model.lin.weight.detach().numpy()[0], model.lin.bias.item()
    p = 1 / (1 + np.exp(-(x.numpy() @ w + b)))
    r = p - y.numpy()  # dloss_i/dlogit_i
    fisher = compute_fisher(model, batched(x, y, 5), bce_losses, mode="per_sample", progress=False)
    np.testing.assert_allclose(fisher["lin.weight"].numpy()[0], ((r[:, None] * x.numpy()) ** 2).mean(0), rtol=1e-6)
    np.testing.assert_allclose(fisher["lin.bias"].numpy(), [(r**2).mean()], rtol=1e-6)


# ------------------------------------------------------------------------------------------- side-effect freedom


def test_no_step_grads_and_modes_restored() -> None:
    model = Mlp()
    model.train()
    model.drop.eval()  # a per-module mode that must survive
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.warns(UserWarning, match="unused"):
        fisher = compute_fisher(model, mlp_batches(), ce_summed, progress=True)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n  # bit-identical: no optimizer step
        assert p.grad is None, n
    assert model.training and not model.drop.training and model.adapter.training
    assert not model.frozen.weight.requires_grad and model.adapter.weight.requires_grad
    assert set(fisher) == {"adapter.weight", "adapter.bias"}  # default: requires_grad only; unused dropped
    assert all(t.dtype == torch.float32 and (t >= 0).all() for t in fisher.tensors.values())


def test_explicit_params_include_frozen_and_keep_existing_grad() -> None:
    model = Mlp()
    sentinel = torch.full_like(model.adapter.bias, 7.0)
    model.adapter.bias.grad = sentinel
    params = {"fw": model.frozen.weight, "ab": model.adapter.bias}
    fisher = compute_fisher(model, mlp_batches(), ce_summed, params=params, progress=False)
    assert fisher.names == ["fw", "ab"] and fisher["fw"].shape == (8, 4)
    assert fisher["fw"].abs().sum() > 0
    assert not model.frozen.weight.requires_grad and model.frozen.weight.grad is None
    assert model.adapter.bias.grad is sentinel


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout() -> None:
    model = Mlp()
    a = compute_fisher(model, mlp_batches(), ce_summed, progress=False, params=dict(model.adapter.named_parameters()))
    b = compute_fisher(model, mlp_batches(), ce_summed, progress=False, params=dict(model.adapter.named_parameters()))
    assert all(torch.equal(a[n], b[n]) for n in a)
    torch.manual_seed(5)
    c = compute_fisher(model, mlp_batches(), ce_summed, progress=False, train=True, params={"w": model.adapter.weight})
    assert not torch.equal(c["w"], a["weight"]) and c.extra["train_mode"] is True


def test_max_batches_counts_and_stops_iterating() -> None:
    model = Mlp()
    pulled = []

    def gen():
        for i, b in enumerate(mlp_batches(n=10, bs=3)):
            pulled.append(i)
            yield b

    fisher = compute_fisher(model, gen(), ce_summed, max_batches=2, progress=False, params={"w": model.adapter.weight})
    assert fisher.num_samples == 6 and fisher.extra["num_batches"] == 2 and pulled == [0, 1]


def test_fp16_accumulates_in_fp32_where_fp16_square_underflows() -> None:
    class Half(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3, dtype=torch.float16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.w * x).sum(-1)

    model = Half()
    x = torch.full((2, 3), 2.0**-16, dtype=torch.float16)  # gradient 2^-16 ~ 1.5e-5, representable in fp16
    loss_fn = lambda m, batch: m(batch)
    assert (x[0] ** 2 == 0).all()  # squaring in fp16 underflows (2^-32 < 2^-24)
    for mode in ("per_sample", "per_batch"):
        fisher = compute_fisher(model, [x, x], loss_fn, mode=mode, progress=False)
        assert fisher["w"].dtype == torch.float32 and torch.isfinite(fisher["w"]).all()
        per_sample = 2.0**-32
        expected = per_sample if mode == "per_sample" else (2 * 2.0**-16) ** 2 / 2  # batch of 2: (2 g)^2 per batch
        assert fisher["w"].tolist() == [expected] * 3
    scaled = compute_fisher(model, [x, x], loss_fn, mode="per_sample", progress=False, loss_scale=1024.0)
    assert scaled["w"].tolist() == [2.0**-32] * 3 and scaled.extra["loss_scale"] == 1024.0


def test_bad_arguments() -> None:
    model = LinearGaussian([1.0])
    data = batched(torch.ones(2, 1, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="per-sample losses"):
        compute_fisher(model, data, gaussian_summed, mode="per_sample", progress=False)
    with pytest.raises(ValueError, match="mode="):
        compute_fisher(model, data, gaussian_summed, mode="diag", progress=False)
    with pytest.raises(ValueError, match="no samples"):
        compute_fisher(model, [], gaussian_summed, progress=False)
    with pytest.raises(ValueError, match="batch size"):
        compute_fisher(model, [{"a": 1}], lambda m, b: m.w.sum(), progress=False)
    model.w.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters"):
        compute_fisher(model, data, gaussian_summed, progress=False)


def test_distributed_path_single_process_group(tmp_path) -> None:
    """The all-reduce branch with a one-process gloo group gives the same embedding as the plain path."""
    import torch.distributed as dist

    model = Mlp()
    plain = compute_fisher(model, mlp_batches(), ce_summed, progress=False, params=adapter_params(model))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        reduced = compute_fisher(model, mlp_batches(), ce_summed, progress=True, params=adapter_params(model))
    finally:
        dist.destroy_process_group()
    assert reduced.num_samples == plain.num_samples == 20 and reduced.extra["world_size"] == 1
    assert all(torch.equal(reduced[n], plain[n]) for n in plain)


def test_non_finite_fisher_warns() -> None:
    model = LinearGaussian([1.0])
    data = [(torch.tensor([[1e200]], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))]
    with pytest.warns(UserWarning, match=r"non-finite Fisher values .*\['w'\]"):
        fisher = compute_fisher(model, data, gaussian_summed, progress=False)  # grad 1e400 overflows float32
    assert not torch.isfinite(fisher["w"]).all()


# ------------------------------------------------------------------------------------------------ save / load


def test_save_load_round_trip_bit_exact(tmp_path) -> None:
    model = Mlp()
    fisher = compute_fisher(model, mlp_batches(), ce_summed, progress=False, params=adapter_params(model))
    fisher.extra["task"] = "refcoco"
    path = tmp_path / "sub" / "refcoco.fisher.safetensors"
    fisher.save(path)
    assert os.listdir(path.parent) == [path.name]  # temp file renamed away
    loaded = FisherEmbedding.load(path)
    assert set(loaded.names) == set(fisher.names)
    for n in fisher:
        assert loaded[n].dtype == torch.float32 and torch.equal(loaded[n], fisher[n])
    assert (loaded.num_samples, loaded.mode, loaded.extra) == (fisher.num_samples, fisher.mode, fisher.extra)


def test_load_rejects_foreign_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a Fisher embedding"):
        FisherEmbedding.load(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="float32"):
        FisherEmbedding({"a": torch.zeros(2, dtype=torch.float16)}, num_samples=1, mode="per_batch")


# ------------------------------------------------------------------------------------------------- similarity


def emb(**tensors: list[float]) -> FisherEmbedding:
    return FisherEmbedding({k: torch.tensor(v, dtype=torch.float32) for k, v in tensors.items()}, 1, "per_sample")


def upstream_cosine(e0: np.ndarray, e1: np.ndarray) -> float:
    """results/task_emb_post_process.ipynb:cosine, verbatim maths."""
    e0, e1 = e0.reshape(-1), e1.reshape(-1)
    e0, e1 = e0 / (e0 + e1 + 1e-6), e1 / (e0 + e1 + 1e-6)
    return 1 - distance.cosine(e0, e1)


def test_identical_embeddings_similarity_one() -> None:
    model = Mlp()
    fisher = compute_fisher(model, mlp_batches(), ce_summed, progress=False, params=adapter_params(model))
    assert task_similarity(fisher, fisher) == pytest.approx(1.0, abs=1e-12)


def test_hand_computed_two_tensors() -> None:
    eps = 1e-6
    e0, e1 = emb(a=[1.0, 0.0], b=[1.0, 1.0]), emb(a=[1.0, 1.0], b=[2.0, 2.0])
    # a: e0' = [1/(2+eps), 0], e1' = [1/(2+eps), 1/(1+eps)] -> cos = e0'_0 / |e1'|
    u = 1 / (2 + eps)
    cos_a = u / math.hypot(u, 1 / (1 + eps))
    # b: e0' = [1, 1]/(3+eps), e1' = [2, 2]/(3+eps): parallel -> 1
    expected = (cos_a + 1.0) / 2
    assert cos_a == pytest.approx(1 / math.sqrt(5), abs=1e-6)  # eps -> 0 limit: 0.5 / sqrt(1.25)
    assert task_similarity(e0, e1) == pytest.approx(expected, abs=1e-12)
    assert task_similarity(e1, e0) == pytest.approx(expected, abs=1e-12)
    ref = np.mean([upstream_cosine(e0[k].numpy().astype(np.float64), e1[k].numpy().astype(np.float64)) for k in "ab"])
    assert task_similarity(e0, e1) == pytest.approx(ref, abs=1e-9)


def test_zero_tensor_skipped_with_warning_and_only_shared_names() -> None:
    e0 = emb(z=[0.0, 0.0], b=[1.0, 2.0], only0=[1.0])
    e1 = emb(z=[3.0, 1.0], b=[1.0, 2.0], only1=[1.0])
    with pytest.warns(UserWarning, match=r"skipped 1 tensor.*\['z'\]"):
        sim = task_similarity(e0, e1)
    assert sim == pytest.approx(1.0)  # mean over b only
    with pytest.warns(UserWarning, match="undefined cosine"):
        assert math.isnan(task_similarity(emb(z=[0.0]), emb(z=[1.0])))
    with pytest.raises(ValueError, match="share no parameter"):
        task_similarity(emb(a=[1.0]), emb(b=[1.0]))


def test_non_finite_tensor_skipped() -> None:
    with pytest.warns(UserWarning, match=r"\['inf'\]"):
        assert task_similarity(emb(inf=[math.inf, 1.0], b=[1.0]), emb(inf=[1.0, 1.0], b=[2.0])) == pytest.approx(1.0)


def test_shape_mismatch_names_parameter_and_shapes() -> None:
    e0 = FisherEmbedding({"enc.adapter.down.weight": torch.ones(4, 8)}, 1, "per_batch")
    e1 = FisherEmbedding({"enc.adapter.down.weight": torch.ones(8, 4)}, 1, "per_batch")
    with pytest.raises(ValueError, match=r"'enc\.adapter\.down\.weight'.*\(4, 8\).*\(8, 4\)"):
        task_similarity(e0, e1)


def tasks() -> dict[str, FisherEmbedding]:
    return {
        "target": emb(a=[1.0, 2.0, 3.0], b=[1.0, 1.0]),
        "near": emb(a=[1.1, 2.0, 2.9], b=[1.0, 1.2]),
        "mid": emb(a=[2.0, 1.0, 3.0], b=[1.0, 3.0]),
        "far": emb(a=[5.0, 0.1, 0.1], b=[4.0, 0.1]),
        "dead": emb(a=[0.0, 0.0, 0.0], b=[0.0, 0.0]),
    }


def test_select_helper_tasks_top_k_and_threshold() -> None:
    embs = tasks()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dead" has an undefined similarity: left out
        ranked = select_helper_tasks("target", embs, k=10)
        sims = {n: s for n, s in ranked}
        assert [n for n, _ in ranked] == ["near", "mid", "far"]
        assert sims["near"] > sims["mid"] > sims["far"]
        assert select_helper_tasks("target", embs, k=2) == ranked[:2]
        cut = (sims["mid"] + sims["far"]) / 2
        assert select_helper_tasks("target", embs, threshold=cut) == ranked[:2]
        assert select_helper_tasks("target", embs, k=1, threshold=cut) == ranked[:1]
    with pytest.raises(ValueError, match="give k"):
        select_helper_tasks("target", embs)
    with pytest.raises(KeyError, match="nope"):
        select_helper_tasks("nope", embs, k=1)


def test_similarity_matrix_and_report() -> None:
    embs = {k: v for k, v in tasks().items() if k != "dead"}
    names, mat = similarity_matrix(embs)
    assert names == ["target", "near", "mid", "far"]
    np.testing.assert_array_equal(mat, mat.T)
    np.testing.assert_array_equal(np.diag(mat), np.ones(4))
    assert mat[0, 1] == pytest.approx(task_similarity(embs["target"], embs["near"]))
    report = fisher_report(embs)
    assert all(n in report for n in names)
    assert f"{mat[0, 1]:.4f}" in report and "1.0000" in report
