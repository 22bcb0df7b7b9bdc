"""Flower's simulation on bench_peers' MLP workload (run as a child process of bench_peers).

``python -m bench.flower_run --peers N --rounds R --inner-steps S --params P --out DIR``
runs Flower's simulation (Ray actors, ``client_resources num_cpus=1``): N virtual
clients, R rounds of FedAvg (every client in every round, equal weights: outer lr
1.0, no momentum), each client doing S SGD steps of
``bench.workloads:MLPWorkload`` (the same model, seed and batches as
``fakecoord run --factory bench.workloads:make_mlp_workload``).  It writes what
bench_peers' ``run_once`` reads from a ``fakecoord run``: ``DIR/rounds/0001``
when a client starts its first step, and ``DIR/report.json`` with each round's
``timings.round_seconds``.

Only imported when ``flwr`` is importable; flwr is not a dependency
(``pip install 'flwr[simulation]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flower_run")
    parser.add_argument("--peers", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--inner-steps", type=int, required=True)
    parser.add_argument("--params", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import numpy as np
    import torch
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    from .workloads import MLPWorkload

    config = {"params": args.params}

    def weights(model: torch.nn.Module) -> list[np.ndarray]:
        return [p.detach().cpu().numpy().copy() for p in model.state_dict().values()]

    class MLPClient(NumPyClient):  # type: ignore[misc]
        def __init__(self, partition: int) -> None:
            self.partition = partition
            self.workload = MLPWorkload(config)
            self.state = self.workload.init_model("cpu")

        def fit(self, parameters: list, fit_config: dict) -> tuple[list, int, dict]:
            (out / "rounds" / "0001").mkdir(parents=True, exist_ok=True)
            model = self.state["model"]
            keys = list(model.state_dict().keys())
            model.load_state_dict(
                {k: torch.from_numpy(np.asarray(v)) for k, v in zip(keys, parameters, strict=True)}
            )
            # The payload fakecoord's bench batches give peer p: delta = 1e-3 * (p + 1).
            job = {
                "num_inner_steps": args.inner_steps,
                "batches": [{"payload": {"delta": 1e-3 * (self.partition + 1)}}],
            }
            result = self.workload.run_inner_loop(self.state, job)
            return weights(model), 1, {"loss": result["metrics"]["loss"]}

    def client_fn(context: Context) -> Any:
        return MLPClient(int(context.node_config["partition-id"])).to_client()

    rounds: list[float] = []
    started: dict[int, float] = {}

    class TimedFedAvg(FedAvg):  # type: ignore[misc]
        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            started[server_round] = time.monotonic()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            aggregated = super().aggregate_fit(server_round, results, failures)
            rounds.append(time.monotonic() - started[server_round])
            if failures:
                raise RuntimeError(f"flower_run: round {server_round}: {len(failures)} failures")
            return aggregated

    def server_fn(context: Context) -> ServerAppComponents:
        initial = MLPWorkload(config).init_model("cpu")["model"]
        strategy = TimedFedAvg(
            fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=args.peers,
            min_available_clients=args.peers,
            initial_parameters=ndarrays_to_parameters(weights(initial)),
        )  # fmt: skip
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=args.peers,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    if len(rounds) != args.rounds:
        raise SystemExit(f"flower_run: {len(rounds)} of {args.rounds} rounds completed")
    report = {"rounds": [{"timings": {"round_seconds": s}} for s in rounds]}
    (out / "report.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
