"""benchmarks/representation_knn.py: its k-NN and z-scoring against scikit-learn."""

import numpy as np
import torch
from conftest import load_benchmark
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler


def test_knn_top1_matches_sklearn_majority_vote_and_z_score_matches_standard_scaler():
    bench = load_benchmark("representation_knn")
    g = torch.Generator().manual_seed(0)
    train_y = torch.randint(0, 4, (300,), generator=g)
    test_y = torch.randint(0, 4, (1500,), generator=g)
    centres = torch.randn(4, 6, generator=g) * torch.tensor([3.0, 0.1, 1, 1, 1, 50])  # one wide feature
    train = centres[train_y] + torch.randn(300, 6, generator=g) * 2
    test = centres[test_y] + torch.randn(1500, 6, generator=g) * 2
    for k in (1, 7):
        reference = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(train.double().numpy(), train_y.numpy())
        expected = 100 * np.mean(reference.predict(test.double().numpy()) == test_y.numpy())
        assert bench.knn_top1(train.double(), train_y, test.double(), test_y, k) == expected
    a, b = bench.z_score(train.double(), test.double())
    scaler = StandardScaler().fit(train.double().numpy())
    np.testing.assert_allclose(a.numpy(), scaler.transform(train.double().numpy()), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(b.numpy(), scaler.transform(test.double().numpy()), rtol=1e-10, atol=1e-10)
