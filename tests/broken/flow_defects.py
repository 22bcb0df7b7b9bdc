"""Defects that only a flow shows (the ``flows.*`` checks) and hook results that only
this project's worker repairs (protocol.portable_results): one each.

Every subject passes the single-call checks and breaks in the network: in the
second round, on a handle another call made, in a process that never trained,
in a process with another hash seed, or on a worker that does not repair
results.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

# -- flows.diloco_rounds --------------------------------------------------------------


class InnerStateDirectory:
    """Returns a directory as inner_optimizer_state_path (the node's fs::read fails)."""

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        result = super().run_inner_loop(state, job)
        return {**result, "inner_optimizer_state_path": tempfile.mkdtemp(prefix="inner-state-")}


class InnerStateConstant:
    """Returns a state file whose bytes never change (a WARN: it keeps nothing)."""

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        result = super().run_inner_loop(state, job)
        handle, path = tempfile.mkstemp(prefix="inner-state-")
        os.write(handle, b"optimizer-state-v1")
        os.close(handle)
        return {**result, "inner_optimizer_state_path": path}


class InnerStateNeverLoaded:
    """Saves an optimizer state every round and never loads the one it is given back
    (a WARN: the network carries a state that changes nothing)."""

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        import io

        import torch

        optimizer = torch.optim.AdamW(state["model"].parameters(), lr=self.lr)
        for i in range(job["num_inner_steps"]):
            x, y = self.batch(job["batches"][i % len(job["batches"])])
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(state["model"](x), y).backward()
            optimizer.step()
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        handle, path = tempfile.mkstemp(prefix="inner-state-")
        os.write(handle, buffer.getvalue())
        os.close(handle)
        return {"steps_completed": job["num_inner_steps"], "inner_optimizer_state_path": path}


# -- flows.train_handles ----------------------------------------------------------------


class PairsRefs:
    """train_window pairs refs (batches[0] with batches[1]): a one-ref window fails."""

    def train_window(self, state: dict, batches: list) -> dict:
        import torch

        pairs = [(batches[i], batches[i + 1]) for i in range(0, len(batches) - 1, 2)]
        if not pairs:
            raise IndexError("train_window needs refs in pairs")
        optimizer = torch.optim.SGD(state["model"].parameters(), lr=self.lr)
        for first, second in pairs:
            x1, y1 = self.batch(first)
            x2, y2 = self.batch(second)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(
                state["model"](torch.cat([x1, x2])), torch.cat([y1, y2])
            )
            loss.backward()
            optimizer.step()
        return {"loss": float(loss), "steps": len(pairs)}


# -- flows.merge_edge_cases -------------------------------------------------------------


class MergeDividesByZero:
    """Normalises by the total weight without a guard (ZeroDivisionError at total 0)."""

    def merge_candidate_models(self, base: dict, candidates: list, policy: Any) -> dict | None:
        import copy

        from conformance.example_workload import _blend, quality

        weights = [float(c["sample_weight"]) * quality(c, policy) for c in candidates]
        total = sum(weights)
        merged = copy.deepcopy(base)
        _blend(merged, [(w / total, c["model"]) for w, c in zip(weights, candidates, strict=True)])
        return merged


# -- flows.root_ema_policies ------------------------------------------------------------


class EmaOnlyForEma:
    """Looks the decay up by policy name: only "Ema" is known."""

    DECAYS = {"Ema": 0.5}

    def apply_single_root_ema(self, base: dict, merged: dict, policy: Any) -> None:
        from conformance.example_workload import _blend

        d = self.DECAYS[policy]
        _blend(merged, [(d, base), (1.0 - d, merged)])


# -- flows.evaluate_fresh_worker -------------------------------------------------------


class EvaluateNeedsTraining:
    """Builds its loss function in train_window: a worker that never trained cannot evaluate."""

    def train_window(self, state: dict, batches: list) -> dict:
        import torch

        self.loss_fn = torch.nn.MSELoss()
        return super().train_window(state, batches)

    def evaluate(self, state: dict, split: Any) -> dict:
        import torch

        from conformance.example_workload import generated

        name = split["Custom"] if isinstance(split, dict) else split
        x, y = generated(sum(map(ord, name)), 64)
        with torch.no_grad():
            loss = self.loss_fn(state["model"](x), y)
        return {"loss": float(loss), "split": name}


# -- flows.exchange_between_processes ---------------------------------------------------


class HashOrderedPacks:
    """Custom pack hooks that walk the tensors in set order: the order of str hashes,
    which differs between processes with different PYTHONHASHSEED."""

    def _entries(self, state: dict, state_dict_filter: dict | None) -> list:
        entries = super()._entries(state, state_dict_filter)
        by_name = dict(entries)
        return [(name, by_name[name]) for name in set(by_name)]

    def _layout(self, entries: list) -> str:
        return super()._layout(sorted(entries, key=lambda e: e[0]))


# -- flows.filters_in_jobs -----------------------------------------------------------------


class ExportIgnoresFilter:
    """Custom export hook that accepts state_dict_filter and exports everything anyway."""

    def export_parameter_pack_path(
        self, state: dict, path: str, model_schema_hash: str, state_dict_filter: dict | None = None
    ) -> None:
        super().export_parameter_pack_path(state, path, model_schema_hash, None)


# -- protocol.portable_results ------------------------------------------------------------


class NameNotStr:
    """workload_name is an int (this worker repairs it; the bundled worker sends it)."""

    workload_name = 42


class TrainReturnsNone:
    """train_window trains and returns None (this worker answers {}; the bundled one fails)."""

    def train_window(self, state: dict, batches: list) -> None:
        super().train_window(state, batches)
        return None


# -- the exit status: no training possible ------------------------------------------------


class TrainExits:
    """train_window raises SystemExit on refs it cannot read (the run is incomplete)."""

    def train_window(self, state: dict, batches: list) -> dict:
        raise SystemExit("cannot read these refs")

    def run_inner_loop(self, state: dict, job: dict) -> dict:
        raise SystemExit("cannot read these refs")
