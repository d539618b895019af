"""The paper's three orderings, on a toy small enough for every `make test` (tests/claims_fixtures.py):

- fine-tuning the LoRA bi-encoder beats the frozen towers (README: "fine-tuning beats the frozen
  towers"; the demo-sized check is tests/test_train_llm.py's slow test);
- the LLM features lift the GNN where IDs and categoricals cannot see the signal, on cold-start
  members (README: "LLM features lift the GNN", "cold-start test members ... where LLM features
  matter most"; the TF-IDF ablation on the synthetic marketplace is tests/test_gnn_train.py's slow test);
- the best GNN beats the fine-tuned towers where the applies carry what the towers' features lack,
  on warm members (README: "the best GNN beats the fine-tuned towers"; measured by `make repro`).

Each margin was measured on data seed 0 and is asserted on data seed 1, so a threshold fitted to
one draw of the toy is tested on another.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from claims_fixtures import tiny_towers, write_cluster_features, write_planted_data
from sklearn.metrics import roc_auc_score

from star_jax.config import LLMTrainConfig, load_config
from star_jax.data.tables import read_labels
from star_jax.gnn.export import gnn_embed
from star_jax.gnn.train import train_gnn
from star_jax.graph.hetero import build_graph
from star_jax.llm.train import train_llm
from star_jax.store import EmbeddingStore

DATA_SEED = 1  # the thresholds below come from data seed 0


@pytest.mark.parametrize("saved, pooling", [([], "mean"), (["embed_tokens"], "mean_first_last")])
def test_finetuning_beats_the_frozen_towers_on_a_planted_pairing(tmp_path, saved, pooling):
    """Members and jobs name their cluster in disjoint vocabularies: the frozen random-init towers
    have nothing to match them by, 30 LoRA steps learn the pairing from the train pairs. Both
    recipes: LoRA alone pooling the last layer, and the demo's (the trained table, pooled too;
    with a frozen table that half of the vector cannot adapt)."""
    data = write_planted_data(tmp_path / "data", seed=DATA_SEED, filler=1)
    tok, cfg = tiny_towers(tmp_path, data)
    cfg.lora.modules_to_save, cfg.llm.pooling = saved, pooling
    # E5's InfoNCE alone: on a random-init base the semi-hard triplet term (the default) collapses
    # every embedding onto one point within 40 steps, where its loss is the margin and its gradient 0.
    cfg.llm_train = LLMTrainConfig(
        steps=30, batch_size=16, lr=1e-2, warmup_steps=3, log_every=10, eval_every=0, checkpoint_every=30,
        eval_batch_size=64, calibration_pairs=0, bce_weight=0.0, triplet_weight=0.0, infonce_weight=1.0,
    )
    result = train_llm(cfg, data, tok, tmp_path / "base", tmp_path / "ft", devices=jax.devices()[:1])
    print({k: round(v, 4) for k, v in result.items() if "auc" in k})
    # Data seed 0 measured: val 0.919 / test 0.902 fine-tuned, 0.338 / 0.478 frozen (gaps +0.58, +0.42).
    for split in ("val", "test"):
        assert result[f"{split}_auc"] >= result[f"{split}_auc_frozen"] + 0.2, result
        assert result[f"{split}_auc"] >= 0.75, result


GNN_SETS = [
    "gnn.hidden_dim=16", "gnn.out_dim=8", "gnn.llm_block=4", "gnn.attribute_block=2",
    "gnn.heads=2", "gnn.layers=1",
    "gnn.id_buckets=256",
    "gnn.cat_dim=4", "gnn.cat_buckets=16", "sampler.batch_size=16", "sampler.num_random_negatives=8",
    # One hop that takes whole neighbourhoods (`sampler.distinct`; no node has more than 4 neighbours
    # per relation): a node's embedding is the same in every batch.
    "sampler.fanouts=[4]",
    *[f"sampler.relation_fanouts.{r}=[4]" for r in ("member_title_rev", "member_company_rev", "job_title_rev",
                                                    "job_company_rev", "member_skill_rev", "job_skill_rev")],
    "gnn_train.steps=30", "gnn_train.eval_every=15", "gnn_train.checkpoint_every=30",
    "gnn_train.log_every=10", "gnn_train.warmup_steps=3", "gnn_train.lr=0.01", "gnn_train.eval_batch_size=32",
    "gnn_train.eval_pairs=0", "store.dtype=float32",
]


def stored_auc(store: EmbeddingStore, data, split: str) -> float:
    """scikit-learn's AUC of numpy dot products of the stored vectors (not star_jax's scoring)."""
    df = read_labels(data, split, ["member_id", "job_id", "label"])
    member = store.lookup("member", df["member_id"].to_numpy())
    job = store.lookup("job", df["job_id"].to_numpy())
    return roc_auc_score(df["label"].to_numpy(), np.sum(member * job, axis=1))


def test_llm_features_lift_the_gnn_on_cold_start_members(tmp_path):
    """Val and test pairs are with cold-start members, whose categoricals and attribute edges are
    random: only the stored features (cluster centroid + noise) say which jobs are theirs."""
    data = write_planted_data(tmp_path / "data", seed=DATA_SEED)
    build_graph(data, tmp_path / "graph")
    write_cluster_features(data, tmp_path / "features", "v1", seed=DATA_SEED)
    cfg = load_config(None, GNN_SETS)
    test_auc = {}
    for variant in ("gnn_id_cat", "gnn_id_cat_llm"):
        result = train_gnn(cfg, data, tmp_path / "graph", tmp_path / variant, variant,
                           store_root=tmp_path / "features", store_version="v1")
        gnn_embed(cfg, tmp_path / "graph", tmp_path / variant, tmp_path / "gnn", variant)
        store = EmbeddingStore.open(tmp_path / "gnn", variant)
        # The export checked by an independent path: with whole neighbourhoods a node's embedding does
        # not depend on its batch, so the val AUC that training logged for the exported params (pair
        # seeds, scored in the evaluator) is the AUC of the exported node vectors (node seeds, written
        # to and read from the store, dot products in numpy, ranked by scikit-learn).
        assert stored_auc(store, data, "val") == pytest.approx(result["val_auc"], abs=1e-6)
        test_auc[variant] = stored_auc(store, data, "test")
    print("test AUC:", test_auc)
    # Data seed 0 measured: gnn_id_cat 0.526, gnn_id_cat_llm 0.993 (gap +0.47; 0.918 before the LLM block).
    assert test_auc["gnn_id_cat"] <= 0.7  # IDs and categoricals: near chance on cold members
    assert test_auc["gnn_id_cat_llm"] >= 0.75
    assert test_auc["gnn_id_cat_llm"] >= test_auc["gnn_id_cat"] + 0.2


def test_the_best_gnn_beats_the_towers_features_on_warm_members(tmp_path):
    """The stored features (the towers' stand-in) of a member name only its cluster's group of two,
    a job's its cluster; each test pair puts a job of the member's cluster it did not apply to
    against a job of the other cluster of its group. The towers' cosine cannot tell them apart; the
    member's train applies can, and the GNN learns them (through its apply edges and the embeddings
    the applies train). A GNN that learned nothing from the applies would see only the group."""
    data = write_planted_data(tmp_path / "data", seed=DATA_SEED, cold=0, pairs_per_cold=8, warm_eval=True,
                              group=2)
    build_graph(data, tmp_path / "graph")
    write_cluster_features(data, tmp_path / "features", "v1", seed=DATA_SEED, dim=32, member_group=2)
    towers = stored_auc(EmbeddingStore.open(tmp_path / "features", "v1"), data, "test")
    # 150 steps, not GNN_SETS' 30: the applies are learned slower than features (seed 0: test AUC
    # 0.735 after 100 steps, 0.797 after 150).
    cfg = load_config(None, [*GNN_SETS, "gnn_train.steps=150", "gnn_train.eval_every=50",
                             "gnn_train.checkpoint_every=150"])
    variant = "gnn_id_cat_llm"  # the best variant (README), its LLM block's gain picked on val
    result = train_gnn(cfg, data, tmp_path / "graph", tmp_path / variant, variant,
                       store_root=tmp_path / "features", store_version="v1")
    gnn_embed(cfg, tmp_path / "graph", tmp_path / variant, tmp_path / "gnn", variant)
    store = EmbeddingStore.open(tmp_path / "gnn", variant)
    assert stored_auc(store, data, "val") == pytest.approx(result["val_auc"], abs=1e-6)
    gnn = stored_auc(store, data, "test")
    print(f"test AUC: towers' features {towers:.4f}, {variant} {gnn:.4f}; gain {result['llm_block_gain']}")
    # Data seed 0 measured: features 0.454, gnn_id_cat_llm 0.797 (gap +0.34); seed 1: 0.554, 0.958.
    assert towers <= 0.65  # the toy as built: the features do not say the cluster within a group
    assert gnn >= 0.7
    assert gnn >= towers + 0.2
