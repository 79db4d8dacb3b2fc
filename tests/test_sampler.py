"""LCM timestep tables and the conversions between prediction types."""

import pytest
import torch

from models.loading import alphas_cumprod
from pipelines.stream_diffusion.params import strength_to_t_index_list
from pipelines.stream_diffusion.sampler import denoised, lcm_timestep, make_step_tables, noise_from_model_output

SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def test_t_index_selects_lcm_timesteps():
    assert [lcm_timestep(i) for i in (0, 16, 32, 35, 45, 49)] == [999, 679, 359, 299, 99, 19]


def test_lcm_boundary_condition_is_negligible_at_streamdiffusion_timesteps():
    tables = make_step_tables([45], alphas_cumprod(SD_SCHEDULE), "lcm", torch.device("cpu"), torch.float64)
    assert tables.c_skip.item() == pytest.approx(0.25 / (990**2 + 0.25))  # ~2.6e-7 at t=99
    assert tables.c_out.item() == pytest.approx(1.0, abs=1e-6)
    turbo = make_step_tables([45], alphas_cumprod(SD_SCHEDULE), "none", torch.device("cpu"), torch.float64)
    assert turbo.c_skip.item() == 0.0 and turbo.c_out.item() == 1.0
    assert tables.alpha.item() ** 2 + tables.beta.item() ** 2 == pytest.approx(1.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_every_prediction_type_recovers_the_clean_latent(prediction_type):
    tables = make_step_tables([10, 30, 45], alphas_cumprod(SD_SCHEDULE), "none", torch.device("cpu"), torch.float64)
    x0, eps = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 4, 8, 8, dtype=torch.float64)
    x = tables.alpha * x0 + tables.beta * eps
    output = {"epsilon": eps, "v_prediction": tables.alpha * eps - tables.beta * x0, "sample": x0}[prediction_type]
    recovered = noise_from_model_output(output, x, tables, prediction_type)
    assert torch.allclose(recovered, eps)
    assert torch.allclose(denoised(x, recovered, tables), x0)


def test_strength_maps_to_a_schedule_that_ends_low():
    assert strength_to_t_index_list(1.0, 1) == [0]
    assert strength_to_t_index_list(0.5, 2) == [24, 45]
    assert strength_to_t_index_list(1.0, 4) == [0, 15, 30, 45]
    low = strength_to_t_index_list(0.02, 3)
    assert low == sorted(set(low)) and low[-1] <= 49
