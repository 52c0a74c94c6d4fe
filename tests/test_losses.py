"""clapcomp.losses vs an independent NumPy float64 reference, on 1, 2, 4 and 8 simulated devices.

The reference below is written from the equations (explicit per-row loops, masked entries simply
left out of the lists); its gradients are float64 central finite differences. Nothing here
reuses code from clapcomp.losses.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from child_env import REPO
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from repo_configs import load_script

from clapcomp.losses import contrastive_loss, modular_loss

DEVICE_COUNTS = (1, 2, 4, 8)
TOL = dict(rtol=1e-5, atol=1e-5)
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True)


# ----------------------------------------------------------------------------- reference


def _lse(values):
    values = np.asarray(values, np.float64)
    top = values.max()
    return top + np.log(np.exp(values - top).sum())


def ref_contrastive(a, t, s, h=None, m=None):
    """Eq. 1 / 2: a [N, D], t [N, D], h [N, K, D], m [N, K] (True = valid)."""
    n = len(a)
    a2t = t2a = 0.0
    for i in range(n):
        row = [s * a[i] @ t[j] for j in range(n)]
        if h is not None:
            row += [s * a[i] @ h[i, k] for k in range(h.shape[1]) if m[i, k]]
        a2t += _lse(row) - s * a[i] @ t[i]
    for j in range(n):
        t2a += _lse([s * a[i] @ t[j] for i in range(n)]) - s * a[j] @ t[j]
    return (a2t / n + t2a / n) / 2


def ref_modular(a, pos, pm, neg, nm, s):
    """Eq. 3: pos[:, 0] is each audio's main caption and always valid."""
    n, num_pos = pos.shape[:2]
    pm = pm.copy()
    pm[:, 0] = True
    a2t = 0.0
    for i in range(n):
        row = [s * a[i] @ pos[j, 0] for j in range(n)]
        row += [s * a[i] @ pos[i, p] for p in range(1, num_pos) if pm[i, p]]
        row += [s * a[i] @ neg[i, q] for q in range(neg.shape[1]) if nm[i, q]]
        z = _lse(row)
        a2t += np.mean([z - s * a[i] @ pos[i, p] for p in range(num_pos) if pm[i, p]])
    queries = [
        _lse([s * a[j] @ pos[i, p] for j in range(n)]) - s * a[i] @ pos[i, p]
        for i in range(n)
        for p in range(num_pos)
        if pm[i, p]
    ]
    return (a2t / n + np.mean(queries)) / 2


def finite_diff_grads(fn, args, eps=1e-6):
    """Central differences of fn(*args) w.r.t. every float64 array/scalar in args."""
    grads = []
    for index, value in enumerate(args):
        value = np.array(value, np.float64)
        grad = np.zeros_like(value)
        for pos in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[pos] += eps
            minus[pos] -= eps
            hi = fn(*args[:index], plus, *args[index + 1 :])
            lo = fn(*args[:index], minus, *args[index + 1 :])
            grad[pos] = (hi - lo) / (2 * eps)
        grads.append(grad)
    return grads


# ----------------------------------------------------------------------------- cases


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _mask(draw, shape):
    mask = draw(arrays(np.bool_, shape))
    if shape[1] and draw(st.booleans()):  # make sure all-masked rows are exercised
        mask[draw(st.integers(0, shape[0] - 1))] = False
    return mask


@st.composite
def contrastive_cases(draw):
    n, k, d = 8 * draw(st.integers(1, 2)), draw(st.integers(0, 3)), draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = np.float32(draw(st.floats(1.0, 30.0)))
    return _unit(rng, n, d), _unit(rng, n, d), _unit(rng, n, k, d), _mask(draw, (n, k)), scale


@st.composite
def modular_cases(draw):
    n, d = 8 * draw(st.integers(1, 2)), draw(st.integers(2, 4))
    p, q = draw(st.integers(1, 3)), draw(st.integers(0, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = np.float32(draw(st.floats(1.0, 30.0)))
    pm, nm = _mask(draw, (n, p)), _mask(draw, (n, q))
    return _unit(rng, n, d), _unit(rng, n, p, d), pm, _unit(rng, n, q, d), nm, scale


def _mesh(devices, axes=("data",), shape=None):
    return Mesh(np.array(jax.devices()[:devices]).reshape(shape or (devices,)), axes)


def _f64(*xs):
    return [np.asarray(x, np.float64) for x in xs]


def _check_all_meshes(loss_and_grad, args, ref_loss, ref_grads):
    """Compare the dense path and the sharded path on every device count with the reference."""
    for mesh in [None] + [_mesh(d) for d in DEVICE_COUNTS]:
        loss, grads = loss_and_grad(*args, mesh)
        np.testing.assert_allclose(loss, ref_loss, **TOL, err_msg=f"loss, mesh={mesh}")
        for name, got, want in zip(("audio", "text/pos", "negatives", "scale"), grads, ref_grads, strict=True):
            np.testing.assert_allclose(got, want, **TOL, err_msg=f"d/d{name}, mesh={mesh}")


# ----------------------------------------------------------------------------- equality


@SETTINGS
@given(contrastive_cases())
def test_contrastive_matches_reference_loss_and_grads(case):
    a, t, h, m, s = case

    def fn(a, t, h, s):
        return ref_contrastive(a, t, s, h, m)

    args64 = _f64(a, t, h, s)
    ref_grads = finite_diff_grads(fn, args64)

    def run(a, t, h, s, mesh):
        return jax.value_and_grad(lambda a, t, h, s: contrastive_loss(a, t, s, h, m, mesh=mesh), argnums=(0, 1, 2, 3))(
            a, t, h, s
        )

    _check_all_meshes(jax.jit(run, static_argnums=4), (a, t, h, s), fn(*args64), ref_grads)


@SETTINGS
@given(modular_cases())
def test_modular_matches_reference_loss_and_grads(case):
    a, pos, pm, neg, nm, s = case

    def fn(a, pos, neg, s):
        return ref_modular(a, pos, pm, neg, nm, s)

    args64 = _f64(a, pos, neg, s)
    ref_grads = finite_diff_grads(fn, args64)

    def run(a, pos, neg, s, mesh):
        return jax.value_and_grad(
            lambda a, pos, neg, s: modular_loss(a, pos, pm, neg, nm, s, mesh=mesh), argnums=(0, 1, 2, 3)
        )(a, pos, neg, s)

    _check_all_meshes(jax.jit(run, static_argnums=4), (a, pos, neg, s), fn(*args64), ref_grads)


def test_plain_loss_matches_reference_on_2d_mesh_with_model_axis():
    rng = np.random.default_rng(0)
    a, t = _unit(rng, 16, 6), _unit(rng, 16, 6)
    want = ref_contrastive(*_f64(a, t), 12.0)
    for mesh, axes in [
        (_mesh(8, ("data", "fsdp"), (2, 4)), None),
        (_mesh(8, ("data", "model"), (4, 2)), None),
        (_mesh(8, ("replica", "model"), (4, 2)), "replica"),
    ]:
        got = jax.jit(lambda a, t, mesh=mesh, axes=axes: contrastive_loss(a, t, 12.0, mesh=mesh, batch_axes=axes))(a, t)
        np.testing.assert_allclose(got, want, **TOL, err_msg=str(mesh))


def test_dense_path_under_spmd_jit_with_sharded_inputs():
    rng = np.random.default_rng(1)
    a, t, h = _unit(rng, 16, 5), _unit(rng, 16, 5), _unit(rng, 16, 3, 5)
    m = rng.random((16, 3)) < 0.5
    rows = NamedSharding(_mesh(8), P("data"))
    a_s, t_s, h_s, m_s = (jax.device_put(x, rows) for x in (a, t, h, m))
    got = jax.jit(lambda *x: contrastive_loss(x[0], x[1], 7.0, x[2], x[3]))(a_s, t_s, h_s, m_s)
    np.testing.assert_allclose(got, ref_contrastive(*_f64(a, t), 7.0, np.float64(h), m), **TOL)


# ----------------------------------------------------------------------------- special cases


def test_no_or_all_masked_negatives_give_exactly_the_plain_loss():
    rng = np.random.default_rng(2)
    a, t, h = _unit(rng, 16, 8), _unit(rng, 16, 8), _unit(rng, 16, 3, 8)
    none = np.zeros((16, 3), bool)
    pos, pm = t[:, None], np.ones((16, 1), bool)
    for mesh in (None, _mesh(8)):
        plain, masked, empty, modular = jax.jit(
            lambda a, t, h, mesh=mesh: (
                contrastive_loss(a, t, 20.0, mesh=mesh),
                contrastive_loss(a, t, 20.0, h, none, mesh=mesh),
                contrastive_loss(a, t, 20.0, h[:, :0], none[:, :0], mesh=mesh),
                modular_loss(a, pos, pm, h, none, 20.0, mesh=mesh),
            )
        )(a, t, h)
        assert masked == plain and empty == plain
        np.testing.assert_allclose(modular, plain, rtol=1e-6)


def test_modular_with_only_main_caption_equals_hard_negative_loss():
    rng = np.random.default_rng(3)
    a, t, h = _unit(rng, 16, 8), _unit(rng, 16, 8), _unit(rng, 16, 4, 8)
    m = rng.random((16, 4)) < 0.5
    pos = np.concatenate([t[:, None], _unit(rng, 16, 2, 8)], axis=1)
    pm = np.zeros((16, 3), bool)  # column 0 counts as valid regardless: the main caption
    for mesh in (None, _mesh(4)):
        got, want = jax.jit(
            lambda a, t, h, mesh=mesh: (
                modular_loss(a, pos, pm, h, m, 20.0, mesh=mesh),
                contrastive_loss(a, t, 20.0, h, m, mesh=mesh),
            )
        )(a, t, h)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_masked_entries_get_exactly_zero_gradient_even_with_nan_padding():
    rng = np.random.default_rng(4)
    a, t = _unit(rng, 8, 4), _unit(rng, 8, 4)
    h, pos = _unit(rng, 8, 3, 4), _unit(rng, 8, 3, 4)
    m, pm = rng.random((8, 3)) < 0.5, rng.random((8, 3)) < 0.5
    m[2], pm[:, 0] = False, True
    h[~m], pos[~pm] = np.nan, np.nan
    for mesh in (None, _mesh(2)):
        loss, (ga, gh) = jax.jit(
            jax.value_and_grad(lambda a, h, mesh=mesh: contrastive_loss(a, t, 30.0, h, m, mesh=mesh), argnums=(0, 1))
        )(a, h)
        assert np.isfinite(loss) and np.isfinite(ga).all()
        assert (gh[~m] == 0).all() and (np.abs(gh[m]).sum(-1) > 0).all()
        loss, (ga, gp, gn) = jax.jit(
            jax.value_and_grad(
                lambda a, p, n, mesh=mesh: modular_loss(a, p, pm, n, m, 30.0, mesh=mesh), argnums=(0, 1, 2)
            )
        )(a, pos, h)
        assert np.isfinite(loss) and np.isfinite(ga).all()
        assert (gp[~pm] == 0).all() and (gn[~m] == 0).all() and np.isfinite(gp).all()


def test_bf16_embeddings_at_scale_100_are_finite_and_close_to_float64():
    rng = np.random.default_rng(5)
    a, t, h = _unit(rng, 32, 64), _unit(rng, 32, 64), _unit(rng, 32, 3, 64)
    t[:4] = a[:4]  # near-saturated softmax rows
    m = np.ones((32, 3), bool)
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (a, t, h)]
    want = ref_contrastive(*_f64(*bf[:2]), 100.0, np.float64(bf[2]), m)
    for mesh in (None, _mesh(8)):
        loss, grads = jax.jit(
            jax.value_and_grad(
                lambda a, t, h, mesh=mesh: contrastive_loss(a, t, 100.0, h, m, mesh=mesh), argnums=(0, 1, 2)
            )
        )(*bf)
        assert loss.dtype == jnp.float32
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        assert all(np.isfinite(np.float32(g)).all() for g in grads)
        pos, pm = jnp.stack([bf[1], bf[1]], axis=1), np.ones((32, 2), bool)
        modular = jax.jit(lambda a, p, h, pm=pm, mesh=mesh: modular_loss(a, p, pm, h, m, 100.0, mesh=mesh))
        assert np.isfinite(modular(bf[0], pos, bf[2]))


def test_errors_say_what_is_wrong():
    a = np.zeros((12, 4), np.float32)
    with pytest.raises(ValueError, match="not divisible"):
        contrastive_loss(a, a, 1.0, mesh=_mesh(8))
    with pytest.raises(ValueError, match="batch_axes"):
        contrastive_loss(a, a, 1.0, mesh=_mesh(4, ("model",)))
    with pytest.raises(ValueError, match="hard_negatives must have shape"):
        contrastive_loss(a, a, 1.0, np.zeros((12, 4), np.float32))
    with pytest.raises(ValueError, match="bool"):
        contrastive_loss(a, a, 1.0, np.zeros((12, 2, 4), np.float32), np.zeros((12, 2)))
    with pytest.raises(ValueError, match="main caption"):
        modular_loss(a, np.zeros((12, 0, 4)), np.zeros((12, 0), bool), a[:, None], np.ones((12, 1), bool), 1.0)


# ----------------------------------------------------------------------------- communication


@pytest.mark.parametrize("which", ["contrastive", "modular"])
def test_compiled_sharded_program_only_moves_audio_and_main_captions(which):
    n_local, k, d = 2, 5, 7  # distinct sizes: any gathered K/P/Q axis would show up in a shape
    mesh, n = _mesh(8), 8 * n_local
    a = jnp.zeros((n, d))
    extra = jnp.zeros((n, k, d))
    mask = jnp.ones((n, k), bool)
    pos = jnp.zeros((n, 3, d))
    if which == "contrastive":
        fn = lambda a, t, x, s: contrastive_loss(a, t, s, x, mask, mesh=mesh)
    else:
        fn = lambda a, p, x, s: modular_loss(a, p, mask[:, :3], x, mask, s, mesh=mesh)
    args = (a, a if which == "contrastive" else pos, extra, 1.0)
    found = _load_benchmark("hlo").collective_shapes(_compiled_grad_hlo(fn, args))
    gathers = [dims for op, dims in found if op == "all-gather"]
    assert len(gathers) == 2 and all(dims == {(n_local, d), (n, d)} for dims in gathers), found
    allowed = {(), (n_local, d), (n, d)}
    assert all(dims <= allowed for _, dims in found), found
    if which == "contrastive":  # control: the parser does see a gather of hard negatives
        naive = lambda a, t, x, s: _load_benchmark("loss_sharding").dense_gather_loss(mesh, a, t, x, mask, s)
        found = _load_benchmark("hlo").collective_shapes(_compiled_grad_hlo(naive, args))
        assert any((n_local, k, d) in dims for op, dims in found if op == "all-gather"), found


def _compiled_grad_hlo(fn, args):
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3))).lower(*args).compile().as_text()


def _load_benchmark(name: str):
    """benchmarks/<name>.py (the HLO collective parser lives in benchmarks/hlo.py, shared with tpu_aot.py)."""
    return load_script(REPO / "benchmarks" / f"{name}.py")


def test_benchmark_smoke(capsys):
    bench = _load_benchmark("loss_sharding")
    assert bench.main(["--n", "64", "--k", "3", "--d", "16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "sharded" in out and "dense" in out
