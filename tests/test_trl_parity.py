"""Our losses against TRL's: DPO, IPO, LN-DPO, hinge (SLiC-HF), cDPO and RPO through TRL's DPOTrainer on the same batch, policy and
(different) reference model; SimPO against TRL's CPOTrainer loss on the same log-probs."""

import pytest
import torch

from selfalign.losses import dpo_loss, hinge_loss, ipo_loss, ln_dpo_loss, rpo_loss, simpo_loss
from selfalign.records import PreferencePair
from selfalign.training.data import tokenize_pair
from selfalign.training.forward import sequence_logps

ROWS = [
    {"prompt": [{"role": "user", "content": "What is 2 + 2?"}],
     "chosen": [{"role": "assistant", "content": "2 + 2 = 4. The answer is 4."}],
     "rejected": [{"role": "assistant", "content": "The answer is 5."}]},
    {"prompt": [{"role": "user", "content": "Name a primary color."}],
     "chosen": [{"role": "assistant", "content": "Red."}],
     "rejected": [{"role": "assistant", "content": "Banana, which is a fruit and not a color at all."}]},
    {"prompt": [{"role": "user", "content": "Say hello in French."}],
     "chosen": [{"role": "assistant", "content": "Bonjour!"}],
     "rejected": [{"role": "assistant", "content": "Hola."}]},
]


def _trl_batch_and_loss(tiny_model_path, tmp_path, trl_loss_type, beta, rows=ROWS, **trl_config):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():  # a reference unlike the policy, so the log-ratios are not all zero
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    loss_types = trl_loss_type if isinstance(trl_loss_type, list) else [trl_loss_type]
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(rows), loss_type=loss_types,
                     beta=beta, report_to=[], max_length=256, use_cpu=True, **trl_config)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    return batch, float(loss), policy, ref, tokenizer


@pytest.mark.parametrize("trl_loss_type, ours, beta", [("sigmoid", "dpo", 0.1), ("ipo", "ipo", 0.1),
                                                        ("sigmoid_norm", "ln_dpo", 2.0), ("hinge", "hinge", 0.1)])
def test_loss_parity_with_trl(tiny_model_path, tmp_path, trl_loss_type, ours, beta):
    batch, trl_loss, policy, ref, tokenizer = _trl_batch_and_loss(tiny_model_path, tmp_path, trl_loss_type, beta)
    inputs = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        logps, lengths = sequence_logps(policy, *inputs)
        ref_logps, _ = sequence_logps(ref, *inputs)
    pc, pr = logps.chunk(2)
    rc, rr = ref_logps.chunk(2)
    lc, lr = lengths.chunk(2)
    if ours == "dpo":
        losses, _, _ = dpo_loss(pc, pr, rc, rr, beta)
    elif ours == "hinge":
        losses, _, _ = hinge_loss(pc, pr, rc, rr, beta)
    elif ours == "ipo":
        losses, _, _ = ipo_loss(pc, pr, rc, rr, lc, lr, beta)
    else:
        losses, _, _ = ln_dpo_loss(pc, pr, rc, rr, lc, lr, beta)
    assert abs(trl_loss - 0.6931) > 1e-3 or ours != "dpo", "policy and reference must differ for a real check"
    assert float(losses.mean()) == pytest.approx(trl_loss, rel=1e-4, abs=1e-5)


def test_our_tokenization_matches_trl(tiny_model_path, tmp_path):
    batch, _, _, _, tokenizer = _trl_batch_and_loss(tiny_model_path, tmp_path, "sigmoid", 0.1)
    trl_rows = []
    for row_index in range(batch["input_ids"].shape[0]):
        ids = batch["input_ids"][row_index]
        trl_rows.append((ids[batch["attention_mask"][row_index].bool()].tolist(),
                         ids[batch["completion_mask"][row_index].bool()].tolist()))
    # TRL's completion ends with what the chat template writes after the end-of-turn token (ChatML's newline); ours
    # ends at that token, where sampling stops (so the sampler's log-probs can be the reference). Up to it, the
    # same tokens.
    eos = tokenizer.eos_token_id
    trl_up_to_eos = [(full[:len(full) - len(completion) + completion.index(eos) + 1],
                      completion[:completion.index(eos) + 1]) for full, completion in trl_rows]
    assert all(len(cut[1]) < len(whole[1]) for cut, whole in zip(trl_up_to_eos, trl_rows)), \
        "the template writes nothing after the end-of-turn token: this test would check nothing"
    for row in ROWS:  # the dataloader may shuffle: each of our sequences must be one of TRL's rows
        pair = PreferencePair(prompt=row["prompt"], chosen=row["chosen"], rejected=row["rejected"], prompt_id="x")
        for completion in (pair.chosen, pair.rejected):
            prompt_ids, completion_ids = tokenize_pair(tokenizer, pair.prompt, completion, 256, 256)
            assert completion_ids[-1] == eos
            assert (prompt_ids + completion_ids, completion_ids) in trl_up_to_eos


def _our_logps(policy, ref, batch):
    inputs = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        logps, lengths = sequence_logps(policy, *inputs)
        ref_logps, _ = sequence_logps(ref, *inputs)
    return (*logps.chunk(2), *ref_logps.chunk(2), *lengths.chunk(2))


@pytest.mark.parametrize("row", range(len(ROWS)))
def test_cdpo_parity_with_trl(tiny_model_path, tmp_path, row):
    """TRL 1.x keeps cDPO's smoothed sigmoid inside its "aot" loss, which sorts log-ratios over the batch: on a
    one-row batch the sort is the identity and "aot" is exactly -(1-ε) log σ(βh) - ε log σ(-βh)."""
    batch, trl_loss, policy, ref, _ = _trl_batch_and_loss(tiny_model_path, tmp_path, "aot", 0.1, rows=[ROWS[row]],
                                                          label_smoothing=0.2)
    pc, pr, rc, rr, _, _ = _our_logps(policy, ref, batch)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, 0.1, label_smoothing=0.2)
    assert float(losses.mean()) == pytest.approx(trl_loss, rel=1e-4, abs=1e-6)
    plain, _, _ = dpo_loss(pc, pr, rc, rr, 0.1)
    assert abs(float(plain.mean()) - trl_loss) > 1e-4, "ε must matter for the check to mean anything"


@pytest.mark.parametrize("row", range(len(ROWS)))
def test_rpo_parity_with_trl(tiny_model_path, tmp_path, row):
    """TRL 1.x writes RPO as loss_type [sigmoid, sft] weighted [1, α]; its sft term is a token mean over the batch,
    which on a one-row batch is our per-sequence -log π(y+|x)/|y+|."""
    alpha = 0.7
    batch, trl_loss, policy, ref, _ = _trl_batch_and_loss(tiny_model_path, tmp_path, ["sigmoid", "sft"], 0.1,
                                                          rows=[ROWS[row]], loss_weights=[1.0, alpha])
    pc, pr, rc, rr, lc, _ = _our_logps(policy, ref, batch)
    losses, _, _ = rpo_loss(pc, pr, rc, rr, lc, beta=0.1, alpha=alpha)
    assert float(losses.mean()) == pytest.approx(trl_loss, rel=1e-4, abs=1e-6)


def test_simpo_parity_with_trl_cpo_loss(tiny_model_path, tmp_path):
    """TRL has SimPO in CPOTrainer (loss_type "simpo"), which takes length-averaged log-probs: its loss function on
    our batch's averages equals ours on the sums and lengths."""
    from types import SimpleNamespace

    from trl.experimental.cpo import CPOTrainer

    batch, _, policy, ref, _ = _trl_batch_and_loss(tiny_model_path, tmp_path, "sigmoid", 0.1)
    pc, pr, _, _, lc, lr = _our_logps(policy, ref, batch)
    beta, gamma = 2.5, 0.7
    trl_self = SimpleNamespace(alpha=0.0, loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=0.0,
                               accelerator=SimpleNamespace(device=pc.device))
    trl_losses, trl_chosen, _ = CPOTrainer.cpo_loss(trl_self, pc / lc, pr / lr)
    ours, chosen, _ = simpo_loss(pc, pr, lc, lr, beta=beta, gamma=gamma)
    torch.testing.assert_close(ours, trl_losses, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(chosen, trl_chosen, rtol=1e-6, atol=1e-7)


KTO_ROWS = [
    {"prompt": [{"role": "user", "content": "What is 2 + 2?"}],
     "completion": [{"role": "assistant", "content": "2 + 2 = 4. The answer is 4."}], "label": True},
    {"prompt": [{"role": "user", "content": "Name a primary color."}],
     "completion": [{"role": "assistant", "content": "Banana, which is a fruit and not a color at all."}], "label": False},
    {"prompt": [{"role": "user", "content": "Say hello in French."}],
     "completion": [{"role": "assistant", "content": "Bonjour!"}], "label": True},
    {"prompt": [{"role": "user", "content": "What is 3 times 3?"}],
     "completion": [{"role": "assistant", "content": "It is 12."}], "label": False},
]


@pytest.mark.parametrize("desirable_weight, undesirable_weight", [(1.0, 1.0), (1.3, 0.7)])
def test_kto_parity_with_trl(tiny_model_path, tmp_path, desirable_weight, undesirable_weight):
    """TRL's KTOTrainer loss on its own batch (completions and its rotated KL completions) against kto_loss on the
    log-probs of the same rows, policy and reference different."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    from selfalign.losses import kto_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in policy.parameters():  # the policy moved away from the reference: log-ratios and z0 are not 0
            p.add_(torch.randn_like(p) * 0.02)
    beta = 0.2
    args = KTOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(KTO_ROWS), beta=beta,
                     desirable_weight=desirable_weight, undesirable_weight=undesirable_weight, report_to=[],
                     max_length=256, use_cpu=True)
    trainer = KTOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(KTO_ROWS),
                         processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))
        logps = {}
        for prefix in ("", "KL_"):
            inputs = (batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch[f"{prefix}completion_mask"])
            logps[prefix] = sequence_logps(policy, *inputs)[0], sequence_logps(ref, *inputs)[0]
    labels = torch.as_tensor(batch["label"], dtype=torch.float32)
    assert 0 < labels.sum() < len(labels), "both classes in the batch"
    z0 = float((logps["KL_"][0] - logps["KL_"][1]).mean())
    assert z0 > 1e-3, f"z0 = {z0}: the KL estimate must be live for a real check"
    losses, _, _ = kto_loss(logps[""][0], logps[""][1], logps["KL_"][0], logps["KL_"][1], labels, beta,
                            desirable_weight, undesirable_weight)
    assert float(losses.mean()) == pytest.approx(trl_loss, rel=1e-4, abs=1e-6)
