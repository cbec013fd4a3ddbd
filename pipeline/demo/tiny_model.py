"""Build a tiny Llama-style causal LM and BPE tokenizer offline, for tests and the demo.

The model is briefly pretrained on general text so that the forgetting check has something to
lose; everything is saved with `save_pretrained` and loaded back through `from_pretrained`, the
same path a Hugging Face hub id takes on a user's machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# Generation prompt ends in a newline so the response always starts on a token boundary
# (byte-level BPE never merges "\n" with the following word).
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}:\n{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def build_tokenizer(corpus: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `corpus` and wrap it with the chat template."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    hf_tok.chat_template = TINY_CHAT_TEMPLATE
    return hf_tok


def _pretrain(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, texts: list[str], steps: int, seed: int
) -> float:
    """A few hundred steps of plain next-token training so the base model knows some general text."""
    g = torch.Generator().manual_seed(seed)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    encoded = [[tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] for ids in encoded if ids]
    max_len = model.config.max_position_embeddings
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    loss_value = float("nan")
    batch_size = 16
    for _ in tqdm(range(steps), desc="pretraining tiny model", leave=False):
        idx = torch.randint(len(encoded), (batch_size,), generator=g).tolist()
        seqs = [encoded[i][:max_len] for i in idx]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((batch_size, width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, s in enumerate(seqs):
            input_ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        labels = input_ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
    model.eval()
    return loss_value


def build_tiny_model(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 1024,
    pretrain_steps: int = 300,
    seed: int = 0,
) -> Path:
    """Build, briefly pretrain and save the tiny model + tokenizer to `out_dir`; returns the directory."""
    from pipeline.demo.sample_data import sample_corpus
    from pipeline.evaluate.general_suite import load_general_suite

    out = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(sample_corpus(), vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    final_loss = None
    if pretrain_steps:
        suite = load_general_suite()
        # The base "knows" the general suite (texts and answers, in the scoring format) so the
        # forgetting check has knowledge to lose; a random base would have nothing to forget.
        corpus = list(suite.texts) + [
            f"Question: {item.question}\nAnswer: {item.choices[item.answer]}" for item in suite.mc_items
        ]
        final_loss = _pretrain(model, tokenizer, corpus, pretrain_steps, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "tiny_model.json").write_text(
        json.dumps(
            {
                "built_by": "lora-pipeline tiny-model",
                "seed": seed,
                "pretrain_steps": pretrain_steps,
                "pretrain_final_loss": final_loss,
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            indent=2,
        )
    )
    return out
