"""Data-parallel sampling: `data_parallel_size` replicas of one engine, each on its own devices, behind the one
`Engine` interface.

Prompts are split into contiguous shards in prompt order, one per replica, and the replicas' samples are joined in
replica order, so the result is in prompt order and each prompt keeps its id (ids are fixed before the split: a
shard's line positions are not the file's). Replica r seeds its engine and its sampling settings with
seed + REPLICA_SEED_STRIDE * r, so the same seed and the same number of replicas give the same shards and seeds (and,
with the hf engine, the same samples; vLLM-CPU's sampling does not repeat between runs even on one engine).

Two transports:
- `local`: one spawned process per replica on this machine. On GPUs replica r sees GPUs
  [r * tp, (r + 1) * tp) of the visible ones (`CUDA_VISIBLE_DEVICES`), on CPU an equal share of the cores (vLLM-CPU's
  thread binding, and the process's affinity for the hf engine).
- `ray`: one Ray actor per replica on a Ray cluster, asking for `tensor_parallel_size` GPUs (on a cluster without
  GPUs, one CPU), so Ray places replicas across the cluster's nodes. Each node needs selfalign installed and the model
  reachable (a hub id, or a path on shared storage).
Both run the same `ReplicaWorker` and call its methods by name (`submit(method, *args)`, then `poll`). A replica reports
progress through its engine's own progress bar (a file its worker writes); the parent draws one bar.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from selfalign.errors import ConfigError, SelfAlignError
from selfalign.generation import SamplingSettings, prompt_ids
from selfalign.generation.options import EngineOptions, require_gpus, visible_gpus
from selfalign.progress import PROGRESS_ENV, QUIET_ENV, progress_bar, read_progress
from selfalign.records import PromptRecord, Sample

REPLICA_SEED_STRIDE = 1_000_003  # a prime, so replica seeds never meet the hf engine's per-batch seed + batch_index


class ReplicaError(SelfAlignError, RuntimeError):
    """A replica failed to start or to generate; the message carries its error."""


def shards(count: int, replicas: int) -> list[range]:
    """Contiguous, near-equal ranges covering 0..count-1 in order (the first `count % replicas` one longer)."""
    size, extra = divmod(count, replicas)
    bounds, start = [], 0
    for r in range(replicas):
        end = start + size + (1 if r < extra else 0)
        bounds.append(range(start, end))
        start = end
    return bounds


def _core_list(cores: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (vLLM-CPU's VLLM_CPU_OMP_THREADS_BIND form)."""
    parts, run = [], [cores[0]]
    for core in cores[1:]:
        if core == run[-1] + 1:
            run.append(core)
        else:
            parts.append(run)
            run = [core]
    parts.append(run)
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in parts)


def local_replica_envs(options: EngineOptions, gpus: list[str] | None, cores: list[int]) -> list[dict[str, str]]:
    """Each local replica's environment: its GPU group, or its share of the cores."""
    replicas, tp = options.data_parallel_size, options.tensor_parallel_size
    if gpus is not None:
        require_gpus(options, len(gpus))
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[r * tp:(r + 1) * tp])} for r in range(replicas)]
    share = len(cores) // replicas
    if share < 1:
        raise ConfigError(f"data_parallel_size {replicas} needs at least {replicas} CPU cores; this process may use "
                          f"{len(cores)}")
    envs = []
    for r in range(replicas):
        mine = cores[r * share:(r + 1) * share]
        envs.append({"VLLM_CPU_OMP_THREADS_BIND": _core_list(mine), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                     "OMP_NUM_THREADS": str(len(mine)), "SELFALIGN_CPU_AFFINITY": ",".join(map(str, mine))})
    return envs


def prompts_finished(progress_file: str) -> int:
    """How many prompts a replica's engine has finished, from its progress file (0 before its bar starts)."""
    info = read_progress(Path(progress_file))
    return int(info["n"]) if info and info.get("n") is not None else 0


class ReplicaWorker:
    """One replica: its engine, in its own process (local) or Ray actor (ray). The parent calls these methods by name
    through either transport (`submit(method, *args)`), so both run the same code."""

    def __init__(self, env: dict, engine: str, model: str, seed: int, options: dict, progress_file: str | None):
        # The environment first (before torch or vLLM import: it picks the devices and cores), then the engine.
        os.environ.update(env)
        self.progress_file = progress_file or tempfile.mktemp(prefix="selfalign-progress-", suffix=".json")
        os.environ[PROGRESS_ENV], os.environ[QUIET_ENV] = self.progress_file, "1"
        if env.get("SELFALIGN_CPU_AFFINITY"):
            os.sched_setaffinity(0, {int(c) for c in env["SELFALIGN_CPU_AFFINITY"].split(",")})
        from selfalign.generation import get_engine

        single = EngineOptions(**options).model_copy(update={"data_parallel_size": 1, "backend": "local"})
        self.engine = get_engine(engine, model, seed=seed, options=single)

    def ready(self) -> str:
        return self.engine.name

    def node(self) -> str:
        """Where it runs: its Ray node id, or its local process."""
        import sys

        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
        return f"local pid {os.getpid()}"

    def generate(self, prompts: list[dict], settings: dict) -> list[dict]:
        records = [PromptRecord(**p) for p in prompts]
        return [s.model_dump() for s in self.engine.generate(records, SamplingSettings(**settings), progress=True)]

    def load_policy(self, model: str) -> None:
        self.engine.load_policy(model)

    def progress(self) -> int:
        return prompts_finished(self.progress_file)

    def close(self) -> None:
        self.engine.close()


def _worker_process(conn, *worker_args) -> None:
    """A local replica's process: builds its worker, then answers (method, args) messages until `close` or the
    parent's end (a closed pipe)."""
    try:
        worker = ReplicaWorker(*worker_args)
        conn.send(("done", worker.ready()))
    except BaseException as e:  # noqa: BLE001 (reported to the parent, which raises it with the replica's number)
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    try:
        while True:
            try:
                method, args = conn.recv()
            except EOFError:
                return
            if method == "close":
                return
            try:
                conn.send(("done", getattr(worker, method)(*args)))
            except Exception as e:  # noqa: BLE001 (same: the parent raises it)
                conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        worker.close()


class _LocalReplica:
    """A replica as a spawned process on this machine, spoken to over a pipe."""

    def __init__(self, index: int, env: dict, engine: str, model: str, seed: int, options: dict, progress_file: str):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: its devices are set before torch loads
        self.index, self.progress_file = index, progress_file
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_process, name=f"selfalign-replica-{index}",
                                       args=(child, env, engine, model, seed, options, progress_file))
        self.process.start()
        child.close()
        self._pending = "start"

    def submit(self, method: str, *args) -> None:
        self.conn.send((method, args))
        self._pending = method

    def poll(self):
        """(finished, result); raises ReplicaError if the replica failed or died."""
        if self.conn.poll():
            try:
                kind, value = self.conn.recv()
            except EOFError:
                kind, value = "error", "its pipe closed"
            if kind == "error":
                raise ReplicaError(f"replica {self.index}: {value}")
            return True, value
        if not self.process.is_alive():
            raise ReplicaError(f"replica {self.index} exited (code {self.process.exitcode}) during {self._pending}; "
                               "its output is above (an out-of-memory kill prints nothing)")
        return False, None

    def progress(self) -> int:
        # Read here, not asked: the worker answers one message at a time and is busy generating.
        return prompts_finished(self.progress_file)

    def close(self) -> None:
        try:
            self.conn.send(("close", ()))
        except (OSError, BrokenPipeError):
            pass
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)


class _RayReplica:
    """A replica as a Ray actor running the same ReplicaWorker; `max_concurrency=2` lets the parent read its progress
    while it generates."""

    def __init__(self, index: int, resources: dict, env: dict, engine: str, model: str, seed: int, options: dict):
        import ray

        self.index = index
        actor_class = ray.remote(ReplicaWorker)
        self.actor = actor_class.options(max_concurrency=2, **resources).remote(env, engine, model, seed, options, None)
        self._future = self.actor.ready.remote()
        self._pending = "start"

    def submit(self, method: str, *args) -> None:
        self._future = getattr(self.actor, method).remote(*args)
        self._pending = method

    def poll(self):
        import ray

        ready, _ = ray.wait([self._future], timeout=0)
        if not ready:
            return False, None
        try:
            return True, ray.get(self._future)
        except Exception as e:  # noqa: BLE001 (Ray wraps the actor's error; keep its last line)
            raise ReplicaError(f"replica {self.index} (Ray actor): {str(e).strip().splitlines()[-1]}") from None

    def progress(self) -> int:
        import ray

        try:
            return ray.get(self.actor.progress.remote(), timeout=5)
        except Exception:  # noqa: BLE001 (progress is a convenience)
            return 0

    def close(self) -> None:
        import ray

        try:
            ray.get(self.actor.close.remote(), timeout=60)
        except Exception:  # noqa: BLE001 (the actor may be gone already)
            pass
        ray.kill(self.actor)


def _connect_ray(address: str | None):
    try:
        import ray
    except ImportError:
        raise ConfigError("backend 'ray' needs Ray: pip install 'selfalign[ray]'") from None
    if not ray.is_initialized():
        # The actors import selfalign from their own Python; log_to_driver keeps their errors visible here.
        ray.init(address=address, log_to_driver=True, ignore_reinit_error=True)
    return ray


class ReplicatedEngine:
    """`data_parallel_size` engines (`engine` is hf or vllm) behind one `generate`."""

    def __init__(self, engine: str, model: str, seed: int, options: EngineOptions):
        self.model = self.model_name = model
        self.options, self.seed = options, seed
        replicas = options.data_parallel_size
        option_dict = options.model_dump()
        seeds = [seed + REPLICA_SEED_STRIDE * r for r in range(replicas)]
        self._tmp = tempfile.TemporaryDirectory(prefix="selfalign-replicas-")
        if options.backend == "ray":
            ray = _connect_ray(options.ray_address)
            on_gpu = ray.cluster_resources().get("GPU", 0) > 0
            resources = {"num_gpus": options.tensor_parallel_size, "num_cpus": 1} if on_gpu else {"num_cpus": 1}
            env = {} if on_gpu else {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
            self.replicas = [_RayReplica(r, resources, env, engine, model, seeds[r], option_dict)
                             for r in range(replicas)]
        else:
            envs = local_replica_envs(options, visible_gpus(), sorted(os.sched_getaffinity(0)))
            self.replicas = [_LocalReplica(r, envs[r], engine, model, seeds[r], option_dict,
                                           str(Path(self._tmp.name) / f"progress-{r}.json")) for r in range(replicas)]
        try:
            names = self._wait([None] * replicas, "start")
        except BaseException:
            self.close()
            raise
        self.name = names[0]

    def _wait(self, shard_sizes: list[int | None], what: str, progress: bool = False) -> list:
        """Each replica's result, in replica order; one progress bar over all of them while they work."""
        results, done = [None] * len(self.replicas), [False] * len(self.replicas)
        total = sum(s for s in shard_sizes if s) if progress else 0
        bar = progress_bar(total=total, desc=f"{what} ({len(self.replicas)} replicas)", unit="prompts",
                           disable=not progress)
        try:
            while not all(done):
                for r, replica in enumerate(self.replicas):
                    if not done[r]:
                        done[r], results[r] = replica.poll()
                if progress:
                    counted = sum(shard_sizes[r] if done[r] else min(replica.progress(), shard_sizes[r])
                                  for r, replica in enumerate(self.replicas))
                    if counted != bar.n:
                        bar.update(counted - bar.n)
                if not all(done):
                    time.sleep(0.2)
        finally:
            bar.close()
        return results

    def generate(self, prompts: list[PromptRecord], settings: SamplingSettings, progress: bool = False) -> list[Sample]:
        ids = prompt_ids(prompts)  # fixed before the split: a shard's positions are not the file's
        keyed = [p.model_copy(update={"id": i}) for p, i in zip(prompts, ids)]
        parts = shards(len(keyed), len(self.replicas))
        for r, (replica, part) in enumerate(zip(self.replicas, parts)):
            replica_settings = settings.model_copy(update={"seed": settings.seed + REPLICA_SEED_STRIDE * r})
            replica.submit("generate", [keyed[i].model_dump() for i in part], replica_settings.model_dump())
        results = self._wait([len(part) for part in parts], f"generate ({self.name})", progress)
        return [Sample(**s) for part in results for s in part]

    def nodes(self) -> list[str]:
        """Where each replica runs: its Ray node id, or its local process."""
        for replica in self.replicas:
            replica.submit("node")
        return self._wait([None] * len(self.replicas), "where")

    def load_policy(self, model: str) -> None:
        if model == self.model:
            return
        for replica in self.replicas:
            replica.submit("load_policy", model)
        self._wait([None] * len(self.replicas), "load policy")
        self.model = self.model_name = model

    def close(self) -> None:
        for replica in getattr(self, "replicas", []):
            replica.close()
        self.replicas = []
        self._tmp.cleanup()

