"""Training engine shared by pretraining, fine-tuning and the evaluations (docs/design.md,
"engine"). One module per concern; `import engine` gives the names below:

- `engine.distributed`: the process group from `torchrun`'s environment (gloo on CPU, NCCL on
  CUDA), the launcher watcher, rank-0 `log`, gradient-preserving gathers, global BatchNorm, DDP;
- `engine.flags`: the command line shared by the entry points, the linear-scaling rule,
  `run_cli` / `run_program` (one-line `prog: error: ...`, exit status 2);
- `engine.process`: process-wide settings (glibc malloc, --threads), applied only by
  `run_program` when an entry point runs as a program;
- `engine.precision`: `--precision auto` (a timed fp32 / bf16 trial on the CPU, cached; bf16 or
  fp16 + GradScaler on CUDA), autocast contexts;
- `engine.randomness`: seeds derived from the run seed, RNG states for exact resume;
- `engine.runs`: run metadata, atomic writes, checkpoints (weights_only), run directories
  (claimed, locked, cleaned), honest resume;
- `engine.loop`: `train(...)`, the one training loop, its `TrainState` (with an optional
  `WeightEMA`) and lr schedules.

Batch size convention: `--batch-size` is the *global* batch; each of the W processes loads
batch_size / W samples per step, so a run means the same thing on 1 CPU or 8 GPUs.
Imports go one way: distributed, randomness, process <- runs <- precision <- loop <- flags.
"""
from engine.distributed import (DistInfo, GlobalBatchNorm, barrier, convert_batchnorm,
                                gather_with_grad, init_distributed, leave_process_group, log,
                                unwrap, watch_launcher, wrap_ddp)
from engine.randomness import derive_seed, rng_state, seed_epoch, set_rng_state, step_generator
from engine.process import apply_process_settings, keep_freed_memory
from engine.runs import (RESUME_EXEMPT, RESUME_FIXED, ROOT, RUN_MARKER, OutputError, RunLock,
                         RunLockError, apply_settings, atomic_write_bytes_via, check_resume_config,
                         claim_run_dir, config_changes, flags_of, format_changes, git_commit,
                         is_run_dir, is_suite_checkpoint, load_checkpoint, lock_run,
                         optimizer_settings, pid_alive, prepare_run_dir, remove_stale_temps,
                         resume_path, resume_run, run_metadata, save_checkpoint, temp_path,
                         utc_now, write_json)
from engine.precision import (PRECISIONS, autocast_dtype, choose_precision, cpu_model,
                              cpu_signature, cpu_speed_features, cuda_auto_precision,
                              describe_precision, enable_tf32, evaluation_precision,
                              layer_trial, made_here, make_scaler, matmul_gflops, precision_cache_key,
                              precision_cache_path, precision_context, recorded_choice,
                              product_screen, recorded_precision, states_restored, trial_speeds)
from engine.loop import (NonFiniteLoss, TrainState, WeightEMA, append_log, epoch_line,
                         format_duration, load_scaler_state, lr_factor, make_scheduler, train)
from engine.flags import (add_common_args, add_lr_scaling_arg, apply_lr_scaling,
                          check_nonnegative, default_workers, eval_split_for, finish_common_args, require_distinct_splits,
                          require_split, run_cli, run_program, scaled_lr)

__all__ = [
    "DistInfo", "GlobalBatchNorm", "NonFiniteLoss", "OutputError",
    "PRECISIONS", "RESUME_EXEMPT", "RESUME_FIXED", "ROOT", "RUN_MARKER", "RunLock",
    "RunLockError", "TrainState", "WeightEMA", "add_common_args", "add_lr_scaling_arg", "append_log",
    "apply_lr_scaling", "apply_process_settings", "apply_settings", "atomic_write_bytes_via",
    "autocast_dtype", "barrier", "check_nonnegative", "check_resume_config",
    "choose_precision", "claim_run_dir", "cpu_signature", "evaluation_precision",
    "layer_trial", "made_here", "matmul_gflops", "product_screen", "recorded_choice", "config_changes", "convert_batchnorm", "cpu_model",
    "cpu_speed_features",
    "cuda_auto_precision", "derive_seed", "describe_precision", "enable_tf32", "epoch_line",
    "default_workers", "eval_split_for", "finish_common_args", "flags_of", "format_changes", "format_duration",
    "gather_with_grad", "git_commit", "init_distributed", "is_run_dir", "is_suite_checkpoint",
    "keep_freed_memory", "leave_process_group", "load_checkpoint", "load_scaler_state", "lock_run", "log",
    "lr_factor", "make_scaler", "make_scheduler", "optimizer_settings", "pid_alive",
    "precision_cache_key", "precision_cache_path", "precision_context", "prepare_run_dir",
    "recorded_precision", "remove_stale_temps", "require_distinct_splits", "require_split",
    "resume_path", "resume_run", "rng_state", "run_cli", "run_metadata", "run_program",
    "save_checkpoint", "scaled_lr", "seed_epoch", "set_rng_state", "states_restored",
    "step_generator", "temp_path", "train", "trial_speeds", "unwrap", "utc_now",
    "watch_launcher", "wrap_ddp", "write_json",
]
