"""Mutation check of the tests: each mutation must make the test named beside it fail.

  python benchmarks/mutations.py [NAME_PART ...]

Each mutation replaces one exact piece of source in a fresh copy of the checkout's tracked
files (a sibling folder, so ``../shared`` resolves as for the checkout; the checkout itself is
never edited), runs its test there and reports ``caught`` / ``MISSED``.  A pattern that no
longer matches exactly once is reported as ``STALE`` -- the check is then out of date with
the code -- and, like a miss, makes the script exit non-zero.
"""

import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, file, exact source, replacement, test that must fail)
MUTATIONS = [
    ("metrics: multi-label relevance needs every query label", "nsh_jax/metrics.py",
     "return np.any((qs[:, None, :] & ds[idx]) != 0, axis=-1)",
     "return np.all((qs[:, None, :] & ds[idx]) == qs[:, None, :], axis=-1)",
     "tests/test_metrics_retrieval.py::test_multilabel_map_with_ties_matches_numpy_and_sklearn"),
    ("metrics: P@H<=2 read at radius 1", "nsh_jax/metrics.py",
     '"p_at_h2": float(pr["precision"][min(2,', '"p_at_h2": float(pr["precision"][min(1,',
     "tests/test_paths.py::test_evaluate_codes_matches_brute_force"),
    ("dpsh: theta without the 1/2", "nsh_jax/losses.py", "theta = 0.5 * jnp.einsum",
     "theta = 1.0 * jnp.einsum", "tests/test_paths.py::test_dpsh_loss_matches_its_formula"),
    ("csq: multi-label target from the first label only", "nsh_jax/losses.py",
     "target = binarize(labels.astype(jnp.float32) @ centers).astype(jnp.float32)",
     "target = centers[jnp.argmax(labels, axis=1)]",
     "tests/test_paths.py::test_csq_loss_single_and_multi_label_targets"),
    ("dsh: margin ignored", "nsh_jax/losses.py", "jnp.maximum(margin - dist, 0.0)",
     "jnp.maximum(2.0 * d - dist, 0.0)",
     "tests/test_paths.py::test_dsh_loss_matches_its_formula_and_margin"),
    ("labels leak into the batch order", "nsh_jax/train.py",
     "t.batch_size, config.seed, start",
     "t.batch_size, config.seed + int(splits.train_labels[0]), start",
     "tests/test_image_folder.py::test_no_leakage_labels_and_queries_do_not_reach_the_database_codes"),
    ("quantizer fitted on the queries", "nsh_jax/evaluation.py",
     '(emb["query"] if sign else emb["train"])[:, :b]', 'emb["query"][:, :b]',
     "tests/test_image_folder.py::test_no_leakage_labels_and_queries_do_not_reach_the_database_codes"),
    ("XLA sort ascending", "nsh_jax/sorting.py", "return jnp.argsort(-scores, axis=axis)",
     "return jnp.argsort(scores, axis=axis)",
     "tests/test_paths.py::test_xla_sort_path_equals_the_sorting_network"),
    ("OT plan not reversed", "nsh_jax/sorting.py", "return n * jnp.flip(plan, axis=1).T",
     "return n * plan.T", "tests/test_paths.py::test_ott_sorter_ranks_largest_first"),
    ("flip test inverted", "nsh_jax/augment.py", "jax.random.uniform(k_flip) < cfg.flip",
     "jax.random.uniform(k_flip) >= cfg.flip",
     "tests/test_paths.py::test_augmentation_at_zero_strength_is_the_identity_and_flip_mirrors"),
    ("cache key ignores the view seed", "nsh_jax/feature_cache.py",
     '"seed": view_seed(config),', '',
     "tests/test_paths.py::test_feature_cache_key_changes_with_everything_it_depends_on"),
    ("every process reads the first slice", "nsh_jax/input_pipeline.py",
     "lo = process_index * local", "lo = 0",
     "tests/test_paths.py::test_each_process_gets_its_slice_of_the_global_batch"),
    ("every length uses the longest code", "nsh_jax/step.py",
     "length_loss(config, pair, bits_all[k])", "length_loss(config, pair, bits_all[-1])",
     "tests/test_paths.py::test_multi_length_codes_are_prefixes_and_each_length_has_a_loss"),
    ("H2Q keeps the last epoch", "nsh_jax/householder.py", "if val_loss < best:", "if True:",
     "tests/test_householder_nested.py::test_h2q_beats_random_rotation"),
    ("batches: one permutation for every epoch", "nsh_jax/input_pipeline.py",
     "default_rng([seed, epoch])", "default_rng([seed, 0])",
     "tests/test_train.py::test_batches_are_a_function_of_the_step"),
    ("folder labels in reverse class order", "nsh_jax/image_folder.py",
     "index = {c: i for i, c in enumerate(class_names)}",
     "index = {c: len(class_names) - 1 - i for i, c in enumerate(class_names)}",
     "tests/test_image_folder.py::test_every_container_reads_the_same_dataset"),
    ("paper validation drawn among training images", "nsh_jax/protocol.py",
     "  outside = (np.arange(len(db_y)) if train_rows is None\n"
     "             else np.setdiff1d(np.arange(len(db_y)), train_rows))",
     "  outside = np.arange(len(db_y))",
     "tests/test_image_folder.py::test_paper_split_is_balanced_disjoint_and_seeded"),
    ("database not shuffled", "nsh_jax/protocol.py", "  if ds.shuffle_database:", "  if False:",
     "tests/test_image_folder.py::test_database_order_is_label_agnostic_and_optional"),
    ("empty class folders not checked", "nsh_jax/image_folder.py",
     "parts[1] not in classes_in[parts[0]]:", "False:",
     "tests/test_image_folder.py::test_empty_class_folder_and_bad_archives"),
    ("reported mAP one deeper", "nsh_jax/evaluation.py",
     "  r = metrics.evaluate_codes(qc, dc, ql, dl, top_k, tie_keys=keys)",
     "  r = metrics.evaluate_codes(qc, dc, ql, dl, (top_k or 0) + 1, tie_keys=keys)",
     "tests/test_cli.py::test_evaluate_writes_metrics_and_plots"),
    ("quantize mode fits ITQ with another seed", "nsh_jax/modes.py",
     "qz = householder.fit(name, tr[:, :b], seed=config.seed)",
     "qz = householder.fit(name, tr[:, :b], seed=config.seed + 1)",
     "tests/test_cli.py::test_quantize_mode_reproduces_the_run_and_compares_quantizers"),
    ("new images coded without the run's quantizer", "nsh_jax/modes.py",
     "                    lambda emb, b: evaluation.codes_for(config, workdir, emb, b),\n"
     "                    state_lib.bit_list(config)",
     "                    lambda emb, b: emb[:, :b],\n                    state_lib.bit_list(config)",
     "tests/test_cli.py::test_index_codes_equal_the_runs_database_codes_and_grow"),
    ("index re-encodes known files", "nsh_jax/image_index.py",
     '  known = set(meta["files"]) | set(meta.get("skipped", []))', "  known = set()",
     "tests/test_cli.py::test_index_codes_equal_the_runs_database_codes_and_grow"),
    ("index of another model accepted", "nsh_jax/image_index.py",
     '  if meta.get("model") != model_digest:\n    raise DataError(f"{out_dir} was built by another model (digest',
     '  if False:\n    raise DataError(f"{out_dir} was built by another model (digest',
     "tests/test_cli.py::test_index_of_another_model_is_refused"),
    ("a resumed run restarts the batch order", "nsh_jax/train.py",
     "t.batch_size, config.seed, start", "t.batch_size, config.seed, 0",
     "tests/test_multiprocess.py::test_two_processes_match_one"),
    ("retrieval gallery with 5 results", "nsh_jax/plots.py",
     "queries: int = 8,\n                       k: int = 10)",
     "queries: int = 8,\n                       k: int = 5)",
     "tests/test_cli.py::test_retrieval_plot_is_written"),
    ("frozen backbone optimised", "nsh_jax/optim.py",
     "  if not config.model.frozen and not frozen_below(config) and scale == 1.0:",
     "  if not frozen_below(config) and scale == 1.0:",
     "tests/test_defects.py::test_frozen_backbone_is_bit_identical_and_has_no_optimizer_state"),
    ("a failed producer dies silently", "nsh_jax/input_pipeline.py",
     "      _put(q, stop, _Failed(e))", "      return",
     "tests/test_defects.py::test_producer_error_reaches_the_training_loop_within_a_second"),
    ("dominance weights from the features, not the hash layer's input", "nsh_jax/step.py",
     'hash_input = jnp.concatenate([detached.out1["hash_input"], detached.out2["hash_input"]])',
     'hash_input = jnp.concatenate([detached.out1["features"], detached.out2["features"]])',
     "tests/test_defects.py::test_dominance_weights_use_the_hash_kernel_gradient"),
    ("barrier returns before waiting", "nsh_jax/distributed.py",
     "  jax_distributed.global_state.client.wait_at_barrier(",
     "  return\n  jax_distributed.global_state.client.wait_at_barrier(",
     "tests/test_multiprocess.py::test_barrier_waits_for_the_late_process"),
    ("digits through scikit-learn's loader", "nsh_jax/input_pipeline.py",
     "  if os.path.exists(path):", "  if False:",
     "tests/test_paths.py::test_digits_read_without_sklearn_equal_sklearns_loader"),
    ("clean store shared across resolutions", "nsh_jax/feature_cache.py",
     '"image_size": int(ds.image_size), "normalization": ds.normalization, "format": 1,\n',
     '"normalization": ds.normalization, "format": 1,\n',
     "tests/test_paths.py::test_clean_store_is_shared_by_splits_views_and_seeds_only"),
    ("clean store read in store order", "nsh_jax/feature_cache.py",
     "(index[k.tobytes()] for k in ks)", "sorted(index[k.tobytes()] for k in ks)",
     "tests/test_feature_cache.py::test_another_split_of_the_same_images_computes_only_its_views"),
    ("cifar.py defaults to Lite0", "configs/cifar.py",
     'def get_config(variant: str = "lite2"):', 'def get_config(variant: str = "lite0"):',
     "tests/test_paths.py::test_cifar_lite2_default_differs_from_lite0_only_in_the_backbone"),
    ("cifar.py:lite2 runs Lite0", "configs/cifar.py",
     'common.frozen_heads(config, f"efficientnet_{variant}")',
     'common.frozen_heads(config, "efficientnet_lite0")',
     "tests/test_paths.py::test_cifar_lite2_default_differs_from_lite0_only_in_the_backbone"),
    # The redesign (#42): configs, encoder input.
    ("coco config on the per-class protocol", "configs/coco.py",
     "  config.train.learning_rate = 3e-3", "  config.dataset.protocol = 'paper'",
     "tests/test_configs.py::test_every_config_and_variant_passes_the_start_up_checks"),
    ("cached views may repeat a view", "nsh_jax/encoder_input.py",
     "jax.random.randint(k2, (), 1, k_views)", "jax.random.randint(k2, (), 0, k_views)",
     "tests/test_feature_cache.py::test_cached_views_are_two_distinct_views_per_example"),
    # Multi-label lists (#43).
    ("list labels other than 0/1 accepted", "nsh_jax/image_lists.py",
     '    bad = [v for v in values if v not in ("0", "1")]', "    bad = []",
     "tests/test_image_lists.py::test_bad_lists_are_one_line_naming_the_file_and_line"),
    ("images without a label accepted", "nsh_jax/image_lists.py",
     "    if not row.any():", "    if False:",
     "tests/test_image_lists.py::test_bad_lists_are_one_line_naming_the_file_and_line"),
    ("list images decoded from another list's row", "nsh_jax/image_lists.py",
     "(images[[row[p] for p in paths]], labels, paths)",
     "(images[:len(paths)], labels, paths)",
     "tests/test_image_lists.py::test_list_reader_reads_directories_and_archives_alike"),
    ("multi-label validation chosen by label", "nsh_jax/protocol.py",
     "    pick = lambda among: np.sort(rng.choice(among, total, replace=False))",
     "    pick = lambda among: np.sort(among[np.argsort(-db_y[among].sum(1), kind='stable')][:total])",
     "tests/test_image_lists.py::test_multi_label_validation_is_disjoint_seeded_and_label_agnostic"),
    ("multi-label validation kept in training", "nsh_jax/protocol.py",
     "    return val_rows, train_rows[~np.isin(train_rows, val_rows)]",
     "    return val_rows, train_rows",
     "tests/test_image_lists.py::test_multi_label_validation_is_disjoint_seeded_and_label_agnostic"),
    ("index words of another file", "nsh_jax/image_index.py",
     '**{n: words[n] for n in new_names if n in words}}}',
     '**{n: words[new_names[0]] for n in new_names if n in words}}}',
     "tests/test_image_lists.py::test_photo_index_prints_each_hits_words_and_frames_shared_labels"),
    ("gallery frames any hit with words green", "nsh_jax/image_index.py",
     'bool(set(q["words"]) & set(h["words"]))', 'bool(set(q["words"]) | set(h["words"]))',
     "tests/test_image_lists.py::test_photo_index_prints_each_hits_words_and_frames_shared_labels"),
    ("ceiling ranks by inner product, not cosine", "nsh_jax/retrieval.py",
     "  qn = l2_normalize(np.asarray(query, np.float32))",
     "  qn = np.asarray(query, np.float32) * 3",
     "tests/test_metrics_retrieval.py::test_cosine_map_the_ceiling_row_matches_brute_force_at_every_depth"),
    # A backbone that trains (#45).
    ("frozen trunk blocks given to the optimizer", "nsh_jax/optim.py",
     '(key.startswith("block") and int(key[5:]) < below)',
     '(key.startswith("block") and int(key[5:]) < 0)',
     "tests/test_trunk.py::test_training_leaves_the_frozen_trunk_and_every_batchnorm_statistic_bit_identical"),
    ("BatchNorm statistics moved by the step", "nsh_jax/step.py",
     "    updated = updated.replace(batch_stats=new_stats)",
     "    updated = updated.replace(batch_stats=jax.tree.map(lambda a: a * 1.01, new_stats))",
     "tests/test_trunk.py::test_training_leaves_the_frozen_trunk_and_every_batchnorm_statistic_bit_identical"),
    ("pretrained weights shared with the donated state", "nsh_jax/models.py",
     '{k: jax.tree.map(jnp.array, tree["backbone"][k])', '{k: tree["backbone"][k]',
     "tests/test_trunk.py::test_training_leaves_the_frozen_trunk_and_every_batchnorm_statistic_bit_identical"),
    ("the trunk's top starts a block late", "nsh_jax/encoder_input.py",
     '(("start", self.stop),)', '(("start", self.stop + 1),)',
     "tests/test_trunk.py::test_the_trunk_path_and_the_images_path_compute_the_same_step"),
    ("the images path trains below the trunk", "nsh_jax/efficientnet.py",
     "      if i == self.frozen_below and i > 0:", "      if False:",
     "tests/test_trunk.py::test_the_trunk_path_and_the_images_path_compute_the_same_step"),
    ("new images through the pooled backbone, not the trunk", "nsh_jax/encoder_input.py",
     "feature_cache.clean_features(self.config, self.variables, self.stop)(images)",
     "feature_cache.clean_features(self.config, self.variables)(images)",
     "tests/test_trunk.py::test_trunk_run_end_to_end_and_its_photo_index_equals_its_database_codes"),
    ("a resumed trunk run restarts the batch order", "nsh_jax/train.py",
     "t.batch_size, config.seed, start", "t.batch_size, config.seed, 0",
     "tests/test_trunk.py::test_a_killed_trunk_run_resumes_to_the_uninterrupted_runs_params"),
    ("a resumed trunk run restarts its optimizer", "nsh_jax/train.py",
     "  run.last_good = step\n",
     "  run.last_good = step\n  state = state.replace(opt_state=jax.tree.map(lambda a: a * 0, "
     "state.opt_state))\n",
     "tests/test_trunk.py::test_a_killed_trunk_run_resumes_to_the_uninterrupted_runs_params"),
    # Ranking past the ties (#44).
    ("search ignores the tie keys", "nsh_jax/retrieval.py",
     "  order = _key_order(tie_keys, dw.shape[0])", "  order = None",
     "tests/test_ranking.py::test_a_class_sorted_database_scores_as_a_shuffled_one_under_the_tie_rule"),
    ("photo index ties in file order", "nsh_jax/image_index.py",
     '                               tie_keys(meta["files"]))', "                               None)",
     "tests/test_ranking.py::test_photo_index_search_ranks_equal_distances_by_the_keys"),
    ("re-ranking ascending", "nsh_jax/retrieval.py",
     'out[lo:lo + chunk] = np.argsort(-score, axis=1, kind="stable")',
     'out[lo:lo + chunk] = np.argsort(score, axis=1, kind="stable")',
     "tests/test_ranking.py::test_asymmetric_ranking_equals_brute_force"),
    ("re-ranking without the tanh", "nsh_jax/retrieval.py",
     "  q = np.tanh(np.asarray(query_codes, np.float32))[:, :bits]",
     "  q = np.asarray(query_codes, np.float32)[:, :bits]",
     "tests/test_ranking.py::test_asymmetric_ranking_equals_brute_force"),
    ("epochs rounded down", "nsh_jax/train.py",
     "config.train.steps = max(1, math.ceil(epochs * n_train / int(config.train.batch_size)))",
     "config.train.steps = max(1, int(epochs * n_train / int(config.train.batch_size)))",
     "tests/test_train.py::test_epochs_set_the_steps_from_the_training_split"),
    ("steps and epochs both accepted", "nsh_jax/config_checks.py",
     "  if steps > 0 and epochs > 0:", "  if False:",
     "tests/test_train.py::test_epochs_set_the_steps_from_the_training_split"),
    # The learning curve (#45).
    ("a resumed run forgets its curve", "nsh_jax/train.py",
     '    run.curve = [c for c in read_json(_curve_path(run.workdir), []) if c["step"] <= step]\n',
     "",
     "tests/test_cli.py::test_learning_curve_is_recorded_and_survives_a_resume"),
    ("a re-evaluated step counted twice", "nsh_jax/train.py",
     'run.curve = [c for c in run.curve if c["step"] != point["step"]] + [point]',
     "run.curve = run.curve + [point]",
     "tests/test_cli.py::test_learning_curve_is_recorded_and_survives_a_resume"),
    ("queries left in the database they search", "nsh_jax/protocol.py",
     "  keep[rows] = False\n", "",
     "tests/test_ranking.py::test_memorisation_check_matches_a_per_query_reference"),
    ("memorisation queries drawn from the validation rows", "nsh_jax/protocol.py",
     "rng.choice(np.asarray(splits.train_rows), n, replace=False)",
     "rng.choice(np.asarray(splits.val_rows), n, replace=False)",
     "tests/test_ranking.py::test_memorisation_check_matches_a_per_query_reference"),
    ("the trained backbone's reference codes made from the frozen features", "nsh_jax/evaluation.py",
     '    sources["trained backbone"] = (trained.train, trained.query, trained.database)',
     '    sources["trained backbone"] = (features.train, features.query, features.database)',
     "tests/test_ranking.py::test_reference_codes_of_a_trained_backbone_are_itq_and_lsh_of_its_own_features"),
    # Awkward inputs: an all-zero row, fewer training rows than bits.
    ("zero rows normalised through ||x||", "nsh_jax/codes.py",
     "xp.where(zero, xp.ones_like(x), x)", "x",
     "tests/test_sorted_nce.py::test_zero_rows_keep_the_loss_and_its_gradient_finite"),
    ("PCA thin with fewer rows than bits", "nsh_jax/householder.py",
     "full_matrices=bits > z.shape[0]", "full_matrices=False",
     "tests/test_householder_nested.py::test_fewer_rows_than_bits_still_give_orthonormal_projections"),
    ("no validation queries by default", "nsh_jax/protocol.py",
     "  if per < 0 or total < 0:", "  if False:",
     "tests/test_ranking.py::test_validation_by_default_takes_a_tenth_out_of_training"),
    ("the verdict never names a baseline", "nsh_jax/evaluation.py",
     "    if scores[best] > model:", "    if False:",
     "tests/test_ranking.py::test_verdict_names_a_baseline_above_the_model_on_validation"),
    # Pooling seeds across reports (#45).
    ("pooled std with ddof 0", "benchmarks/pool_seeds.py",
     "/ (n - 1)) if n > 1", "/ n) if n > 1",
     "tests/test_pool_seeds.py::test_pooled_reports_equal_the_statistics_of_all_seeds"),
    ("curve points pooled one report one vote", "benchmarks/pool_seeds.py",
     'curves[key].append((len(r["seeds"]), r["curves"][key]))',
     'curves[key].append((1, r["curves"][key]))',
     "tests/test_pool_seeds.py::test_pooled_reports_equal_the_statistics_of_all_seeds"),
    ("the frozen ceiling alone gets hash-layer rows", "nsh_jax/evaluation.py",
     "rows = {} if emb is None else", "rows = {} if False else",
     "tests/test_feature_cache.py::test_the_frozen_ceiling_alone_is_the_clean_features_cosine_ranking"),
]


def _copy_tree() -> str:
  """The checkout's tracked files (as they are on disk) in a new sibling folder."""
  files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                         check=True).stdout.decode().split("\0")
  dest = tempfile.mkdtemp(prefix=".mutant-", dir=os.path.dirname(ROOT))
  for f in filter(None, files):
    if os.path.exists(os.path.join(ROOT, f)):
      os.makedirs(os.path.dirname(os.path.join(dest, f)), exist_ok=True)
      shutil.copy2(os.path.join(ROOT, f), os.path.join(dest, f))
  return dest


def check(name, path, old, new, test) -> str:
  with open(os.path.join(ROOT, path)) as f:
    src = f.read()
  if src.count(old) != 1:
    return f"STALE (the pattern occurs {src.count(old)} times)"
  tree = _copy_tree()
  try:
    with open(os.path.join(tree, path), "w") as f:
      f.write(src.replace(old, new))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        test], cwd=tree, capture_output=True, text=True, timeout=1800,
                       env=dict(os.environ, PYTHONPATH=tree))
    last = ([ln for ln in r.stdout.splitlines() if ln.strip()] or [""])[-1]
    if r.returncode == 0:
      return f"MISSED ({last})"
    return f"caught ({last})" if " failed" in last else f"ERROR, the test did not run ({last})"
  finally:
    shutil.rmtree(tree, ignore_errors=True)


def main():
  only = sys.argv[1:]
  bad = 0
  for name, path, old, new, test in MUTATIONS:
    if only and not any(o in name for o in only):
      continue
    verdict = check(name, path, old, new, test)
    bad += not verdict.startswith("caught")
    print(f"{verdict}: {name} -> {test}", flush=True)
  sys.exit(1 if bad else 0)


if __name__ == "__main__":
  main()
