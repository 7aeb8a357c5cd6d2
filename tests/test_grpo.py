"""g1jax.rl.grpo: every term against hand-computed values (docs/grpo.md has the formulas)."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from g1jax import recipes
from g1jax.rl import grpo
from g1jax.rl.grpo import GRPOConfig

# The losses of the recipe registry (g1jax/recipes.py): G1's, DAPO's, Dr. GRPO's
G1_LOSS, DAPO_LOSS, DRGRPO_LOSS = (recipes.config(name).grpo for name in ("g1-paper", "g0-dapo", "g0-drgrpo"))


def close(actual, expected, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, dtype=np.float64), rtol=1e-5, atol=atol)


def one_line_error(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.fixture(scope="module")
def loss_terms():
    """grpo_loss_terms jitted once; the config and max_len are static."""
    return jax.jit(grpo.grpo_loss_terms, static_argnames=("config", "max_len"))


# --- advantages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", sorted(grpo.ADVANTAGE_ESTIMATORS))
def test_equal_rewards_give_exactly_zero_advantage(estimator):
    # float32 means of five 6.2s, 2.1s or 0.9s are off by an ulp; the second group must stay informative
    rewards = jnp.array([6.2] * 5 + [1.0, -1.0, -1.0, 1.0, -1.0] + [2.1] * 5 + [0.9] * 5)
    adv = np.asarray(grpo.group_advantages(rewards, 5, estimator))
    assert np.array_equal(adv[:5], np.zeros(5)) and np.array_equal(adv[10:], np.zeros(10))
    assert np.all(adv[5:10] != 0)


# two groups of 4, hand-computed: [1, 2, 3, 6] has mean 3, deviations [-2, -1, 0, 3], ddof=1
# variance 14/3; [0, 0, 1, 0] has mean 1/4, deviations [-1/4, -1/4, 3/4, -1/4], ddof=1 std 1/2.
KNOWN_REWARDS = [1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 1.0, 0.0]
KNOWN_DEVIATIONS = [-2.0, -1.0, 0.0, 3.0, -0.25, -0.25, 0.75, -0.25]
KNOWN_EXPECTED = {
    "grpo": [d / (math.sqrt(14 / 3) + 1e-6) for d in KNOWN_DEVIATIONS[:4]]
    + [d / (0.5 + 1e-6) for d in KNOWN_DEVIATIONS[4:]],
    "drgrpo": KNOWN_DEVIATIONS,
    # r_i minus the mean of the other three
    "rloo": [1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2, 0 - 1 / 3, 0 - 1 / 3, 1 - 0, 0 - 1 / 3],
}


@pytest.mark.parametrize("estimator", sorted(KNOWN_EXPECTED))
def test_known_groups(estimator):
    close(grpo.group_advantages(jnp.array(KNOWN_REWARDS), 4, estimator, eps=1e-6), KNOWN_EXPECTED[estimator])


def test_grpo_eps_is_added_to_the_std():
    # deviations -+1/2, ddof=1 std sqrt(1/2)
    scale = math.sqrt(0.5) + 0.5
    close(grpo.group_advantages(jnp.array([0.0, 1.0]), 2, eps=0.5), [-0.5 / scale, 0.5 / scale])


def test_zero_spread_groups():
    flags = grpo.zero_spread_groups(jnp.array([1.0, 1.0, 1.0, 0.0, -1.0, -1.0]), 2)
    assert np.asarray(flags).tolist() == [True, False, True]


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: grpo.group_advantages(jnp.ones(4), 1), ["group_size", ">= 2"]),
        (lambda: grpo.group_advantages(jnp.ones(4), 2.0), ["group_size"]),
        (lambda: grpo.group_advantages(jnp.ones(5), 2), ["5 entries", "group_size 2"]),
        (lambda: grpo.group_advantages(jnp.ones((2, 2)), 2), ["one-dimensional"]),
        (lambda: grpo.group_advantages(jnp.ones(4), 2, "ppo"), ["estimator", "ppo"]),
        (lambda: grpo.group_advantages(jnp.ones(4), 2, eps=0.0), ["eps"]),
        (lambda: grpo.zero_spread_groups(jnp.ones(4), 1), ["group_size"]),
    ],
)
def test_group_advantage_errors(call, words):
    with pytest.raises(ValueError) as excinfo:
        call()
    one_line_error(excinfo, *words)


# --- policy loss ---------------------------------------------------------------------------------

# row 0 has A = +2, row 1 has A = -1; clip_low 0.2 and clip_high 0.28 differ so a swap shows
# the last column sits between the two epsilons: 1.25 is inside 1 + 0.28, 0.75 is outside 1 - 0.2
CRAFTED_RATIOS = np.array([[1.1, 1.5, 0.5, 1.0, 1.25], [0.9, 0.5, 1.5, 5.0, 0.75]])
CRAFTED_ADV = np.array([2.0, -1.0])


def crafted_policy_loss(dual_clip):
    logp = jnp.log(jnp.array(CRAFTED_RATIOS, jnp.float32))

    def loss_sum(logp):
        loss, stats = grpo.token_policy_loss(
            logp, jnp.zeros_like(logp), jnp.array(CRAFTED_ADV), clip_low=0.2, clip_high=0.28, dual_clip=dual_clip
        )
        return jnp.sum(loss), (loss, stats)

    grad, (loss, stats) = jax.grad(loss_sum, has_aux=True)(logp)
    return loss, stats, grad


def test_policy_loss_on_crafted_ratios_without_dual_clip():
    loss, stats, grad = crafted_policy_loss(None)
    # A > 0: inside, above 1 + 0.28 (held at 1.28), below 1 - 0.2 (not clipped for A > 0), at 1
    # A < 0: inside, below 0.8 (held at 0.8), above 1.28 (not clipped for A < 0), far above
    close(loss, [[-2 * 1.1, -2 * 1.28, -2 * 0.5, -2 * 1.0, -2 * 1.25], [0.9, 0.8, 1.5, 5.0, 0.8]])
    close(stats["clipped_high"], [[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    close(stats["clipped_low"], [[0, 0, 0, 0, 0], [0, 1, 0, 0, 1]])
    close(stats["clipped_dual"], np.zeros((2, 5)))
    close(stats["ratio"], CRAFTED_RATIOS)
    # d loss / d logp = -A * ratio where nothing holds the loss, else exactly 0
    close(grad, [[-2 * 1.1, 0, -2 * 0.5, -2 * 1.0, -2 * 1.25], [0.9, 0, 1.5, 5.0, 0]])


def test_dual_clip_bounds_the_loss_for_negative_advantages():
    loss, stats, grad = crafted_policy_loss(3.0)
    close(loss, [[-2 * 1.1, -2 * 1.28, -2 * 0.5, -2 * 1.0, -2 * 1.25], [0.9, 0.8, 1.5, 3.0, 0.8]])
    close(stats["clipped_dual"], [[0, 0, 0, 0, 0], [0, 0, 0, 1, 0]])
    close(grad, [[-2 * 1.1, 0, -2 * 0.5, -2 * 1.0, -2 * 1.25], [0.9, 0, 1.5, 0, 0]])


def test_zero_advantage_is_never_clipped():
    logp = jnp.log(jnp.array([[0.5, 1.0, 1.5, 5.0]]))

    def loss_sum(x):
        return jnp.sum(grpo.token_policy_loss(x, jnp.zeros_like(x), jnp.zeros(1), dual_clip=3.0)[0])

    _, stats = grpo.token_policy_loss(logp, jnp.zeros_like(logp), jnp.zeros(1), dual_clip=3.0)
    for name in ("clipped_low", "clipped_high", "clipped_dual"):
        close(stats[name], np.zeros((1, 4)), atol=0)
    close(jax.grad(loss_sum)(logp), np.zeros((1, 4)), atol=0)


def test_log_ratio_is_clamped_before_exp():
    logp = jnp.array([[50.0, -50.0]])
    loss, stats = grpo.token_policy_loss(logp, jnp.zeros_like(logp), jnp.array([-1.0]))
    close(stats["ratio"], [[math.exp(20.0), math.exp(-20.0)]], atol=0)
    assert np.all(np.isfinite(np.asarray(loss)))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(advantages=jnp.ones((2, 3))), ["advantages", "(2,)"]),
        (dict(old_logp=jnp.zeros((2, 4))), ["old_logp", "(2, 3)"]),
        (dict(clip_low=1.0), ["clip_low"]),
        (dict(clip_high=0.0), ["clip_high"]),
        (dict(dual_clip=1.0), ["dual_clip"]),
        (dict(max_log_ratio=-1.0), ["max_log_ratio"]),
    ],
)
def test_policy_loss_errors(kwargs, words):
    args = dict(logp=jnp.zeros((2, 3)), old_logp=jnp.zeros((2, 3)), advantages=jnp.ones(2)) | kwargs
    with pytest.raises(ValueError) as excinfo:
        grpo.token_policy_loss(args.pop("logp"), args.pop("old_logp"), args.pop("advantages"), **args)
    one_line_error(excinfo, *words)


# --- KL -------------------------------------------------------------------------------------------

# d = ref_logp - logp = [-0.5, 1, 30, -30]
KL_LOGP = jnp.array([[-1.0, -2.0, -1.0, -1.0]])
KL_REF = jnp.array([[-1.5, -1.0, 29.0, -31.0]])


def test_kl_estimators_by_hand():
    close(grpo.kl_penalty(KL_LOGP, KL_REF, "k1"), [[0.5, -1.0, -30.0, 30.0]])
    close(grpo.kl_penalty(KL_LOGP, KL_REF, "k2"), [[0.125, 0.5, 450.0, 450.0]])
    # k3 = exp(d) - d - 1; d = +-30 is clamped to +-20 and the result to 10
    close(grpo.kl_penalty(KL_LOGP, KL_REF, "k3"), [[math.exp(-0.5) - 0.5, math.e - 2, 10.0, 10.0]])


def test_k3_clamps_are_configurable():
    k3 = grpo.kl_penalty(KL_LOGP, KL_REF, "k3", log_ratio_clamp=1.0, clamp=100.0)
    close(k3, [[math.exp(-0.5) - 0.5, math.e - 2, math.e - 2, math.exp(-1.0)]])
    # only the value clamp acts at d = 3: exp(3) - 4 = 16.09 -> 10
    close(grpo.kl_penalty(jnp.zeros((1, 1)), jnp.full((1, 1), 3.0), "k3"), [[10.0]])


def test_kl_gradients_with_respect_to_the_policy():
    logp, ref = jnp.array([[-1.0]]), jnp.array([[-1.5]])
    for kind, expected in [("k1", 1.0), ("k2", 0.5), ("k3", 1 - math.exp(-0.5))]:
        grad = jax.grad(lambda x, kind=kind: jnp.sum(grpo.kl_penalty(x, ref, kind)))(logp)
        close(grad, [[expected]])


def test_kl_errors():
    with pytest.raises(ValueError) as excinfo:
        grpo.kl_penalty(KL_LOGP, KL_REF, "k4")
    one_line_error(excinfo, "kind", "k4")
    with pytest.raises(ValueError) as excinfo:
        grpo.kl_penalty(KL_LOGP, KL_REF[:, :2])
    one_line_error(excinfo, "ref_logp")


# --- truncated importance sampling -----------------------------------------------------------------


def test_tis_weights_and_cap():
    old = jnp.array([[math.log(0.5), math.log(1.5), math.log(4.0), 100.0]])
    close(grpo.tis_weights(old, jnp.zeros_like(old), 2.0), [[0.5, 1.5, 2.0, 2.0]])  # capped at 2, no overflow
    grad = jax.grad(lambda o: jnp.sum(grpo.tis_weights(o, jnp.zeros_like(o), 2.0)))(old)
    close(grad, np.zeros((1, 4)), atol=0)
    with pytest.raises(ValueError) as excinfo:
        grpo.tis_weights(old, old, 0.5)
    one_line_error(excinfo, "cap")


# --- aggregation ----------------------------------------------------------------------------------

NAN = float("nan")
AGG_VALUES = jnp.array(
    [[1.0, 2.0, NAN, NAN], [10.0, 20.0, 30.0, 40.0], [NAN, NAN, NAN, NAN], [100.0, 200.0, 300.0, NAN]]
)
AGG_MASK = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=bool)


@pytest.mark.parametrize(
    "mode, max_len, expected_sum, expected_count",
    [
        ("token-mean", None, 703.0, 9.0),
        # sequence means 1.5, 25, 200; the empty row is not counted
        ("sequence-mean-token-mean", None, 226.5, 3.0),
        ("sequence-mean-token-sum-norm", None, 703.0, 16.0),
        ("sequence-mean-token-sum-norm", 6, 703.0, 24.0),
    ],
)
@pytest.mark.parametrize("mask_dtype", [bool, np.float32])
def test_aggregation_modes_on_a_ragged_mask(mode, max_len, expected_sum, expected_count, mask_dtype):
    total, count = grpo.aggregate(AGG_VALUES, AGG_MASK.astype(mask_dtype), mode, max_len)
    close(total, expected_sum)
    close(count, expected_count)


def test_ratio_of_an_empty_mask_is_zero():
    assert float(grpo.ratio_of(0.0, 0.0)) == 0.0
    close(grpo.ratio_of(6.0, 3.0), 2.0)
    for mode in ("token-mean", "sequence-mean-token-mean"):
        assert float(grpo.ratio_of(*grpo.aggregate(AGG_VALUES, np.zeros((4, 4)), mode))) == 0.0


@pytest.mark.parametrize(
    "args, words",
    [
        ((AGG_VALUES, AGG_MASK, "mean"), ["mode", "mean"]),
        ((AGG_VALUES, AGG_MASK[:, :3], "token-mean"), ["mask", "(4, 4)"]),
        ((AGG_VALUES, AGG_MASK, "sequence-mean-token-sum-norm", 3), ["max_len", ">= the token length 4"]),
        ((AGG_VALUES[0], AGG_MASK[0], "token-mean"), ["values", "[batch, length]"]),
    ],
)
def test_aggregation_errors(args, words):
    with pytest.raises(ValueError) as excinfo:
        grpo.aggregate(*args)
    one_line_error(excinfo, *words)


# --- the combined loss ------------------------------------------------------------------------------

MU1_MASK = jnp.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], jnp.float32)
MU1_ADV = jnp.array([1.5, -0.5, 2.0])
MU1_LOGP = jnp.array(np.random.default_rng(0).uniform(-3.0, -0.1, (3, 5)), jnp.float32)


def mu1_loss(loss_terms, config, ref_logp=None, sampler_logp=None):
    def loss(logp):
        old_logp = jax.lax.stop_gradient(logp)
        total, count, _ = loss_terms(logp, old_logp, MU1_ADV, MU1_MASK, config, ref_logp, sampler_logp)
        return grpo.ratio_of(total, count)

    return jax.value_and_grad(loss)(MU1_LOGP)


def test_one_update_per_rollout_gradient_is_minus_advantage_over_count(loss_terms):
    value, grad = mu1_loss(loss_terms, GRPOConfig())
    count = 9.0  # active tokens
    close(value, -(1.5 * 3 - 0.5 * 1 + 2.0 * 5) / count)
    close(grad, -MU1_ADV[:, None] / count * MU1_MASK)


def test_g1_loss_adds_the_k3_gradient(loss_terms):
    ref = MU1_LOGP + jnp.array([[0.3, -0.2, 0.1, 0.0, 0.0], [-0.4, 0.0, 0.0, 0.0, 0.0], [0.2] * 5])
    value, grad = mu1_loss(loss_terms, G1_LOSS, ref_logp=ref)
    delta = np.asarray(ref - MU1_LOGP)
    k3 = np.exp(delta) - delta - 1
    mask, adv = np.asarray(MU1_MASK), np.asarray(MU1_ADV)[:, None]
    close(value, np.sum((-adv + 0.01 * k3) * mask) / 9.0)
    close(grad, (-adv + 0.01 * (1 - np.exp(delta))) * mask / 9.0)


def test_tis_weights_scale_the_policy_term(loss_terms):
    sampler = MU1_LOGP - jnp.array([[math.log(0.5), math.log(1.5), math.log(4.0), 0.0, 0.0]] * 3)
    weights = np.array([[0.5, 1.5, 2.0, 1.0, 1.0]] * 3)  # capped at 2
    value, grad = mu1_loss(loss_terms, GRPOConfig(tis_cap=2.0), sampler_logp=sampler)
    mask, adv = np.asarray(MU1_MASK), np.asarray(MU1_ADV)[:, None]
    close(value, np.sum(-adv * weights * mask) / 9.0)
    close(grad, -adv * weights * mask / 9.0)


def test_metrics_count_only_active_tokens(loss_terms):
    # four active tokens, each caught by a different case: unclipped (ratio 1), clipped high (1.5, A > 0),
    # clipped low (0.5, A < 0), dual-clipped (4.0, A < 0); padding after them, a padded row with a large
    # advantage, and a reference 0.5 nats below the policy on the active tokens, far off on the padding.
    # Counting any padding changes every expected value below.
    ratios = np.array([[1.0, 1.5, 1.5, 1.5], [0.5, 0.5, 0.5, 1.0], [1.0, 1.0, 1.0, 1.0], [4.0, 4.0, 1.0, 1.0]])
    mask = jnp.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    logp = jnp.log(jnp.array(ratios, jnp.float32))
    ref_logp = logp + jnp.asarray(np.where(np.asarray(mask) == 1, -0.5, 3.0), jnp.float32)
    config = GRPOConfig(kl_coef=0.1, dual_clip=1.5)
    total, count, metrics = loss_terms(
        logp, jnp.zeros((4, 4)), jnp.array([1.0, -1.0, 5.0, -1.0]), mask, config, ref_logp
    )
    m = {name: float(grpo.ratio_of(*pair)) for name, pair in metrics.items()}
    close(m["clip_frac_high"], 1 / 4)
    close(m["clip_frac_low"], 1 / 4)
    close(m["clip_frac_dual"], 1 / 4)
    close(m["ratio_mean"], (1.0 + 1.5 + 0.5 + 4.0) / 4)
    close(m["abs_log_ratio_mean"], (0 + math.log(1.5) + math.log(2.0) + math.log(4.0)) / 4)
    policy_loss = (-1.0 - 1.2 + 0.8 + 1.5) / 4  # -A r, -A (1 + 0.2), -A (1 - 0.2), -A * 1.5
    close(m["policy_loss"], policy_loss)
    k3 = math.exp(-0.5) + 0.5 - 1  # exp(d) - d - 1 with d = ref - policy = -0.5 on every active token
    close(m["kl"], k3)
    close(m["advantage_mean"], -1 / 3)  # rows 0, 1, 3: the padded row's advantage 5 is not counted
    close(m["advantage_sq_mean"], 1.0)
    close(m["advantage_nonzero_frac"], 1.0)
    close(grpo.ratio_of(total, count), policy_loss + 0.1 * k3)
    assert "tis_weight_mean" not in m and "sampler_abs_logp_diff" not in m


def test_padding_log_probs_cannot_poison_loss_or_gradient(loss_terms):
    logp = MU1_LOGP.at[0, 4].set(-jnp.inf).at[1, 1].set(jnp.nan)
    ref = MU1_LOGP.at[0, 3].set(jnp.nan)

    def loss(x):
        total, count, _ = loss_terms(x, jax.lax.stop_gradient(x), MU1_ADV, MU1_MASK, G1_LOSS, ref, x)
        return grpo.ratio_of(total, count)

    value, grad = jax.value_and_grad(loss)(logp)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    assert np.all(np.asarray(grad)[np.asarray(MU1_MASK) == 0] == 0)


ACC_CONFIG = GRPOConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.05, kl_kind="k3", tis_cap=2.0)


@pytest.fixture(scope="module")
def accumulation_batch():
    rng = np.random.default_rng(1)
    batch, length = 8, 6
    lengths = np.array([6, 1, 0, 3, 6, 2, 5, 4])  # one empty row, one full row per micro-batch pair
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float32)
    old = rng.uniform(-3.0, -0.1, (batch, length))
    logp = old + rng.normal(0.0, 0.6, (batch, length))  # wide enough to clip in all three ways
    ref = logp + rng.normal(0.0, 0.3, (batch, length))
    sampler = old + rng.normal(0.0, 0.5, (batch, length))
    adv = rng.normal(0.0, 1.0, batch)
    # plant one token of each clip kind among the active ones (the noise alone may miss the dual clip)
    adv[0], adv[3] = -1.3, 0.9
    logp[0, 2], logp[0, 3], logp[3, 1] = old[0, 2] + math.log(4.0), old[0, 3] - 0.5, old[3, 1] + 0.5
    arrays = dict(logp=logp, old=old, ref=ref, sampler=sampler, adv=adv, mask=mask)
    return {name: jnp.array(value, jnp.float32) for name, value in arrays.items()}


@functools.partial(jax.jit, static_argnames="config")
def one_vs_four_batches(batch, config):
    """(value, gradient, metrics) of the loss on all 8 rows at once and on 4 micro-batches of 2."""

    def terms(logp, rows):
        b = batch
        args = (b["old"][rows], b["adv"][rows], b["mask"][rows], config, b["ref"][rows], b["sampler"][rows])
        return grpo.grpo_loss_terms(logp[rows], *args, max_len=6)

    micro = [slice(i, i + 2) for i in range(0, 8, 2)]

    def one_batch(logp):
        total, count, metrics = terms(logp, slice(0, 8))
        return grpo.ratio_of(total, count), metrics

    def four_micro_batches(logp):
        parts = [terms(logp, rows) for rows in micro]
        # the train step's accumulation: add the sums and the counts, divide once
        total = sum(part[0] for part in parts)
        count = jax.lax.stop_gradient(sum(part[1] for part in parts))
        metrics = jax.tree.map(lambda *pairs: sum(pairs), *[part[2] for part in parts])
        return total / count, metrics

    one = jax.value_and_grad(one_batch, has_aux=True)(batch["logp"])
    four = jax.value_and_grad(four_micro_batches, has_aux=True)(batch["logp"])
    return one, four


@pytest.mark.parametrize("loss_agg", grpo.AGGREGATION_MODES)
def test_micro_batch_accumulation_equals_one_big_batch(accumulation_batch, loss_agg):
    config = dataclasses.replace(ACC_CONFIG, loss_agg=loss_agg)
    ((full_value, full_metrics), full_grad), ((micro_value, micro_metrics), micro_grad) = one_vs_four_batches(
        accumulation_batch, config
    )
    close(micro_value, full_value)
    close(micro_grad, full_grad)
    assert np.any(np.asarray(full_grad) != 0)
    assert full_metrics.keys() == micro_metrics.keys()
    for name, (total, count) in full_metrics.items():
        close(micro_metrics[name][0], total)
        close(micro_metrics[name][1], count)
    # the batch must exercise every clip, or the equivalence says little about them
    for name in ("clip_frac_low", "clip_frac_high", "clip_frac_dual"):
        assert 0 < float(grpo.ratio_of(*full_metrics[name])) < 1
    assert 0 < float(grpo.ratio_of(*full_metrics["tis_weight_mean"])) < 2


def test_loss_terms_errors():
    x, adv, mask = jnp.zeros((2, 3)), jnp.ones(2), jnp.ones((2, 3))
    with pytest.raises(ValueError) as excinfo:
        grpo.grpo_loss_terms(x, x, adv, mask, GRPOConfig(kl_coef=0.01))
    one_line_error(excinfo, "ref_logp")
    with pytest.raises(ValueError) as excinfo:
        grpo.grpo_loss_terms(x, x, adv, mask, GRPOConfig(tis_cap=2.0))
    one_line_error(excinfo, "sampler_logp")
    with pytest.raises(ValueError) as excinfo:
        grpo.grpo_loss_terms(x, x, adv, mask, {"group_size": 5})
    one_line_error(excinfo, "GRPOConfig")
    with pytest.raises(ValueError) as excinfo:
        grpo.grpo_loss_terms(x, x, adv, mask[:, :2], GRPOConfig())
    one_line_error(excinfo, "mask")


# --- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("group_size", 1),
        ("group_size", 4.0),
        ("group_size", True),
        ("advantage", "ppo"),
        ("advantage_eps", 0.0),
        ("advantage_eps", float("nan")),
        ("clip_low", 0.0),
        ("clip_low", 1.0),
        ("clip_high", -0.1),
        ("clip_high", float("inf")),
        ("dual_clip", 1.0),
        ("dual_clip", "3"),
        ("kl_coef", -0.01),
        ("kl_coef", float("nan")),
        ("kl_kind", "k4"),
        ("loss_agg", "mean"),
        ("tis_cap", 0.5),
        ("tis_cap", float("nan")),
        ("ppo_epochs", 0),
        ("ppo_minibatches", 1.5),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError) as excinfo:
        GRPOConfig(**{field: value})
    one_line_error(excinfo, field)


def test_recipe_losses_and_reference_flag():
    g1 = G1_LOSS
    assert (g1.group_size, g1.advantage, g1.advantage_eps) == (5, "grpo", 1e-6)
    assert (g1.clip_low, g1.clip_high, g1.dual_clip) == (0.2, 0.2, None)
    assert (g1.kl_coef, g1.kl_kind, g1.loss_agg, g1.tis_cap) == (0.01, "k3", "token-mean", None)
    assert g1.needs_reference and not GRPOConfig().needs_reference
    assert DAPO_LOSS.clip_high == 0.28 and not DAPO_LOSS.needs_reference
    drgrpo = DRGRPO_LOSS
    assert (drgrpo.advantage, drgrpo.loss_agg, drgrpo.kl_coef) == ("drgrpo", "sequence-mean-token-sum-norm", 0.0)
    hash(g1)  # usable as a static jit argument
