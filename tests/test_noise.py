"""Per-sample training noise (`noise_i2moe.CounterNoise`): a sample's numbers depend on the seed, the
step and its id, never on its row in the batch; and they are the distributions they claim to be."""

import pytest
import torch
from scipy import stats

from i2moe.noise_i2moe import CounterNoise


def test_a_samples_noise_does_not_depend_on_its_row_or_its_batch():
    ids = torch.tensor([7, 3, 11, 0, 5])
    whole = CounterNoise(1234, 9, ids).normal((3, 4), stream=2)
    split = [CounterNoise(1234, 9, part).normal((3, 4), stream=2) for part in (ids[:2], ids[2:])]
    torch.testing.assert_close(torch.cat(split), whole, rtol=0, atol=0)
    permuted = CounterNoise(1234, 9, ids.flip(0)).normal((3, 4), stream=2)
    torch.testing.assert_close(permuted.flip(0), whole, rtol=0, atol=0)
    torch.testing.assert_close(CounterNoise(1234, 9, ids).subset(ids > 4).normal((3, 4), stream=2), whole[ids > 4])


@pytest.mark.parametrize("change", ["seed", "step", "stream", "id"])
def test_seed_step_stream_and_id_each_change_the_numbers(change):
    base = dict(seed=1, step=2, stream=3, ids=torch.tensor([4]))
    other = dict(base, **{"seed": {"seed": 9}, "step": {"step": 8}, "stream": {"stream": 7},
                          "id": {"ids": torch.tensor([6])}}[change])
    draw = lambda s: CounterNoise(s["seed"], s["step"], s["ids"]).normal((64,), stream=s["stream"])  # noqa: E731
    assert not torch.equal(draw(base), draw(other))


def test_normals_and_uniforms_have_their_distributions():
    noise = CounterNoise(0, 1, torch.arange(400))
    normal = noise.normal((50,), stream=0).flatten().double().numpy()
    assert stats.kstest(normal, "norm").pvalue > 0.01
    uniform = noise.uniform((50,), stream=5).flatten().double().numpy()
    assert stats.kstest(uniform, "uniform").pvalue > 0.01 and 0.0 < uniform.min() and uniform.max() < 1.0
    # Neighbouring ids and elements are not correlated.
    grid = noise.normal((50,), stream=1)
    assert abs(torch.corrcoef(torch.stack([grid[:-1].flatten(), grid[1:].flatten()]))[0, 1]) < 0.05
