"""The seeded codebook: a pinned counter-based generator, atoms chosen and combined, thread independence."""

from __future__ import annotations

import torch

from gvc_train.models.codebook.noise_codebook import atoms, choose_atoms, codebook_key, combine_atoms, gaussian


def test_generator_is_pinned() -> None:
    # Known answers: a change here changes every stream ever written.
    key = codebook_key(0, "known")
    assert key == -1009125921559795241
    expected = [[0.8814988136291504, -0.2683296799659729, -0.09987232089042664, 1.595740556716919],
                [0.5157269239425659, 0.5555149912834167, 1.0682393312454224, 0.8360342979431152]]  # fmt: skip
    assert atoms(key, [0, 5], 4).tolist() == expected


def test_atoms_are_addressable_and_gaussian() -> None:
    key = codebook_key(3, "atoms", 0, 1, 2)
    all_KD = atoms(key, torch.arange(256), 333)
    assert torch.equal(atoms(key, [200, 7], 333), all_KD[[200, 7]])  # atom by atom = the whole codebook
    assert not torch.equal(atoms(codebook_key(3, "atoms", 0, 1, 3), [7], 333)[0], all_KD[7])  # another frame, another codebook
    z = atoms(key, torch.arange(4096), 500)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float((z**4).mean()) - 3) < 0.05  # Gaussian kurtosis, not a uniform's 1.8
    assert gaussian(key, (2, 3, 4)).shape == (2, 3, 4)


def test_atoms_do_not_depend_on_threads() -> None:
    key = codebook_key(1, "t")
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = atoms(key, torch.arange(64), 20_000)
        torch.set_num_threads(2)
        two = atoms(key, torch.arange(64), 20_000)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, two)


def test_chosen_atoms_recover_a_target_in_the_codebook() -> None:
    """Known answer: a residual that is a signed sum of M atoms gives back those atoms and signs."""
    key, K, D = codebook_key(9, "known-answer"), 512, 300
    wanted = torch.tensor([3, 77, 200, 511])
    signs = torch.tensor([True, False, True, False])
    z = atoms(key, wanted, D)
    residual = (z * torch.where(signs, 1.0, -1.0)[:, None]).sum(0)
    indices, positive = choose_atoms(key, residual, K, 4)
    assert torch.equal(indices, wanted) and torch.equal(positive, signs)
    noise = combine_atoms(key, indices, positive, D)
    assert torch.allclose(noise, residual * (D / residual.square().sum()).sqrt(), atol=1e-5)
    assert abs(float(noise.square().mean()) - 1) < 1e-5


def test_choose_atoms_refuses_counts_outside_the_codebook() -> None:
    import pytest

    with pytest.raises(ValueError, match="atoms per step"):
        choose_atoms(0, torch.ones(10), 8, 9)
