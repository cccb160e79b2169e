"""The distillation task (`task: distill`), BitDistill end to end: `python -m bitnet_train +experiment=distill_qwen distill.teacher=PATH`.

The stages run in order in one command, each in its own folder under the run folder:
  1 stage1_refine/student.ckpt      modeling refinement: the teacher mapped into our decoder, every linear but
                                    lm_head ternary, new norms per distill.norms (distill/student.py)
  2 stage2_continual/checkpoints/   continual pre-training: next-token CE on `data` + distill.stage2.data for
                                    distill.stage2.tokens tokens (0 skips it), PretrainModule
  3 stage3_distill/checkpoints/     distillation: CE + lambda * logit KL + gamma * attention-relation KL on
                                    `data` + distill.stage3.data (packed text or prompt/answer), DistillModule
Each stage's trainer comes from the shared builder (tasks/trainer.py), as pretraining's does: the same
callbacks, loggers, strategy (file checkpoints, e.g. ddp) and Slurm requeue handling. A Slurm preemption
during stage 2 or 3 checkpoints and ends the job in that stage; the requeued job (`ckpt_path=auto`) resumes
there. A quantization schedule (`schedule=`, e.g. phasein_linear) phases the student in during stage 2, and
quant.activation_schemes_at (a4.8, v2: 8-bit activations first) switches during stage 2 as well; stage 3
trains the student fully quantized with its final activation schemes.
Every checkpoint carries its stage (`checkpoint["distill"]`), so `ckpt_path=` any of them resumes there
(`ckpt_path=auto`: the newest in this run folder): a
stage-1 file starts stage 2 from it, a stage-2 or stage-3 file continues that stage exactly (Lightning's
resume: optimizer, schedule, data position, RNG) and then runs the remaining stages. The current stage is in
the progress bar, in the log lines and logged as `stage`; metrics.json holds each stage's figures and the
held-out loss and perplexity of the teacher and of the student after every stage, on stage 3's validation set.

Settings are all checked before the teacher is loaded, the teacher and the stage-1 student before any data
is tokenized, and the data before any training step.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from bitnet_train.config import (ConfigError, DataConfig, ModelConfig, OptimConfig, QuantConfig, ScheduleConfig,
                                 from_mapping, to_dict)
from bitnet_train.data import CausalLMDataModule
from bitnet_train.distill.config import BitDistillConfig
from bitnet_train.distill.data import DistillDataModule
from bitnet_train.distill.evaluate import validation_loss
from bitnet_train.distill.logit_cache import TeacherLogitCache
from bitnet_train.distill.student import (calibrate_new_norms, check_student_init, load_teacher_weights,
                                          student_model_config)
from bitnet_train.distill.teacher import Teacher, load_teacher, relation_pairs
from bitnet_train.evaluate.callback import evaluation_metrics
from bitnet_train.lit.callbacks.stage import StageCallback
from bitnet_train.lit.checkpoint_io import atomic_torch_save, load_checkpoint_file
from bitnet_train.lit.distill import DistillModule
from bitnet_train.lit.pretrain import PretrainModule
from bitnet_train.lit.run_checkpoints import newest_resumable
from bitnet_train.tasks.checks import check_resume, check_schedule, check_seq_len, resolve_vocab
from bitnet_train.tasks.trainer import RunTrainer, build_trainer, finish_run, fit

log = logging.getLogger(__name__)

STAGES = {1: ("modeling refinement", "stage1_refine"), 2: ("continual pre-training", "stage2_continual"),
          3: ("distillation", "stage3_distill")}
STAGE1_FILE = "student.ckpt"
CALIBRATION_BATCHES = 4
"""Training micro-batches the new norms' gains are fitted on (distill.norm_init=calibrated)."""


@dataclass
class Settings:
    """Every section a distillation run reads, validated."""

    distill: BitDistillConfig
    quant: QuantConfig
    model: ModelConfig
    data2: DataConfig
    data3: DataConfig
    optim2: OptimConfig
    optim3: OptimConfig
    schedule: ScheduleConfig
    world_size: int
    accumulate: int
    resume: dict[str, Any] | None = None
    resume_path: str | None = None


def _merged(cls: type, section: str, base: Any, overrides: dict) -> Any:
    """`base` with the stage's overrides (None values keep the base value), validated as `cls`."""
    values = OmegaConf.to_container(base, resolve=True) if OmegaConf.is_config(base) else dict(base or {})
    return from_mapping(cls, section, {**values, **{k: v for k, v in overrides.items() if v is not None}})


def world_size_of(trainer_cfg: DictConfig) -> int:
    """Processes the configured trainer will run (devices x nodes); 'auto' counts visible GPUs."""
    devices = trainer_cfg.get("devices", 1)
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    if isinstance(devices, int) and devices > 0:
        return devices * nodes
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices) * nodes
    if str(trainer_cfg.get("accelerator", "auto")) in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count() * nodes
    return nodes


def read_settings(cfg: DictConfig) -> Settings:
    """All sections as validated dataclasses, and the checkpoint to resume from; nothing heavy is loaded."""
    if cfg.get("distill") is None:
        raise ConfigError("task=distill needs the distill group: run an experiment that sets it "
                          "(+experiment=distill_qwen, distill_llama or distill_tiny) or add +distill=bitdistill")
    distill = from_mapping(BitDistillConfig, "distill", cfg.distill)
    quant = from_mapping(QuantConfig, "quant", cfg.quant)
    if quant.enabled and quant.norm != distill.norms:
        raise ConfigError(f"quant.norm={quant.norm!r} differs from distill.norms={distill.norms!r}; set only "
                          "distill.norms (the distillation experiments set quant.norm from it)")
    from_mapping(DataConfig, "data", cfg.data)
    if cfg.get("init_from"):
        raise ConfigError("init_from does not apply to distillation: the student starts from distill.teacher "
                          "(or distill.student_init, a transformers folder); set init_from=null")
    schedule = from_mapping(ScheduleConfig, "schedule", cfg.get("schedule"))
    check_schedule(schedule, quant)
    if schedule.active and distill.stage2.tokens == 0:
        raise ConfigError("a quantization schedule phases the student in during stage 2, but distill.stage2.tokens=0; "
                          "give stage 2 tokens or set schedule=none")
    if quant.enabled and quant.activation_schemes_at != 0 and distill.stage2.tokens == 0:
        raise ConfigError(f"quant.activation_schemes_at={quant.activation_schemes_at} switches activation schemes "
                          "during stage 2, but distill.stage2.tokens=0; give stage 2 tokens or set "
                          "quant.activation_schemes_at=0 (stage 3 then trains with the final schemes throughout)")
    settings = Settings(
        distill=distill, quant=quant, model=from_mapping(ModelConfig, "model", cfg.model),
        data2=_merged(DataConfig, "distill.stage2.data", cfg.data, distill.stage2.data),
        data3=_merged(DataConfig, "distill.stage3.data", cfg.data, distill.stage3.data),
        optim2=_merged(OptimConfig, "distill.stage2.optim", cfg.optim, distill.stage2.optim),
        optim3=_merged(OptimConfig, "distill.stage3.optim", cfg.optim, distill.stage3.optim),
        schedule=schedule, world_size=world_size_of(cfg.trainer), accumulate=int(cfg.trainer.get("accumulate_grad_batches", 1) or 1))
    if settings.data3.streaming and (distill.stage3.steps is None or distill.stage3.logit_cache.enabled):
        raise ConfigError("a streamed stage-3 dataset has no known size: set distill.stage3.steps and keep "
                          "distill.stage3.logit_cache.enabled=false (or set data.streaming=false)")
    if settings.data2.layout != "text":
        raise ConfigError("distill.stage2.data.layout must be text: continual pre-training packs a general corpus")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "auto":  # requeued jobs: this run folder's newest stage checkpoint, if any
        ckpt_path = newest_stage_checkpoint(Path(cfg.out_dir))
        log.info("ckpt_path=auto: %s", ckpt_path or "no stage checkpoint in the run folder yet, starting fresh")
    if ckpt_path:
        if Path(ckpt_path).is_dir():
            raise ConfigError(f"checkpoint {ckpt_path} is a sharded folder; distillation resumes from single-file "
                              "checkpoints (convert it with python -m bitnet_train.consolidate, or use strategy=ddp)")
        checkpoint = load_checkpoint_file(ckpt_path)
        tag = checkpoint.get("distill")
        if not isinstance(tag, dict) or tag.get("stage") not in STAGES:
            raise ConfigError(f"checkpoint {ckpt_path} is not a BitDistill stage checkpoint; resume from "
                              f"{STAGES[1][1]}/{STAGE1_FILE} or a stage*/checkpoints/*.ckpt file of a distillation run")
        settings.resume, settings.resume_path = checkpoint, str(ckpt_path)
    return settings


def newest_stage_checkpoint(out_dir: Path) -> str | None:
    """The checkpoint of the latest stage this run folder reached: stage 3's or stage 2's newest, else stage 1's."""
    for stage in (3, 2):
        found = newest_resumable(out_dir / STAGES[stage][1])
        if found is not None:
            return found
    stage1 = out_dir / STAGES[1][1] / STAGE1_FILE
    return str(stage1) if stage1.is_file() else None


def _with_warmup(optim: OptimConfig, fraction: float | None, steps: int) -> OptimConfig:
    if fraction is not None:
        optim.warmup_steps = int(round(fraction * steps))
    return optim


def _stage_cfg(cfg: DictConfig, stage_dir: Path, steps: int) -> DictConfig:
    """The run config with out_dir (and so checkpoints, logs) moved to the stage's folder and its step count."""
    stage = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    stage.out_dir = str(stage_dir)
    stage.trainer.max_steps = steps
    return stage


def _trainer(cfg: DictConfig, stage: int, steps: int, stage_dir: Path, settings: Settings, module: PretrainModule,
             step_plans: bool) -> RunTrainer:
    """The stage's trainer from the shared builder; stage 2 carries the run's step plans (schedule, activation switch)."""
    stage_cfg = _stage_cfg(cfg, stage_dir, steps)
    run = build_trainer(stage_cfg, module.model, max_steps=steps,
                        quant=settings.quant if step_plans else None, schedule=settings.schedule if step_plans else None,
                        callbacks=[StageCallback(stage, STAGES[stage][0])], hyperparams={"distill_stage": stage})
    if run.trainer.world_size != settings.world_size:
        raise ConfigError(f"the trainer runs {run.trainer.world_size} processes, not the {settings.world_size} read from "
                          "trainer.devices x trainer.num_nodes; set trainer.devices explicitly")
    return run


def _eval_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _student_loss(model: torch.nn.Module, datamodule: CausalLMDataModule) -> dict[str, float]:
    device = _eval_device()
    model.to(device)
    was_training = model.training
    model.eval()
    try:
        return validation_loss(model, datamodule.val_dataloader(), device)
    finally:
        model.train(was_training)


def _teacher_loss(teacher: Teacher, datamodule: CausalLMDataModule) -> dict[str, float]:
    device = _eval_device()
    teacher.to(device)
    recorder, teacher.recorder = teacher.recorder, None
    try:
        return validation_loss(lambda ids: teacher(ids).logits, datamodule.val_dataloader(), device)
    finally:
        teacher.recorder = recorder


def _fit(run: RunTrainer, module: PretrainModule, datamodule: CausalLMDataModule, ckpt: str | None
         ) -> dict[str, Any]:
    trainer = run.trainer
    seconds = fit(run, module, datamodule, ckpt)
    out: dict[str, Any] = {"steps": int(trainer.global_step), "tokens_seen": int(module.tokens_seen),
                           "train_seconds": round(seconds, 2), "resumed_from": ckpt}
    if run.requeued:
        return {**out, "requeued": True}
    final = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(final)
    out["checkpoint"] = str(final)
    for key in ("train/loss", "train/ce", "train/logit_kl", "train/attn_kl"):
        value = trainer.callback_metrics.get(key)
        if value is not None:
            out[key.replace("/", "_")] = float(value)
    return {**out, **evaluation_metrics(trainer.callbacks)}  # callbacks.evaluation, when enabled


class DistillationRun:
    """The state the stages share: settings, teacher, data modules, the student's weights and the metrics."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg, self.out_dir = cfg, Path(cfg.out_dir)
        self.settings = settings = read_settings(cfg)
        self.distill, self.kd = settings.distill, settings.distill.stage3
        self.resume_stage = settings.resume["distill"]["stage"] if settings.resume else 0
        L.seed_everything(cfg.seed, workers=True)

        # the teacher and the stage-1 student, before any data is read
        self.teacher = load_teacher(self.distill)
        self._local_tokenizer()
        self.student_cfg = student_model_config(self.teacher, self.distill, settings.model)
        self.student_init: dict[str, torch.Tensor] | None = None  # distill.student_init's weights, for stage 1
        if self.distill.student_init and self.resume_stage == 0:
            init = load_teacher(dataclasses.replace(self.distill, teacher_dtype="float32"), key="student_init")
            check_student_init(init.config, self.teacher.config, init.source)
            self.student_init = init.model.state_dict()
        self.student = self.build(settings.optim2)
        if self.kd.attention_weight > 0 and (self.kd.steps is None or self.kd.steps > 0):
            relation_pairs(self.teacher.model, self.student.model, self.kd.attention)  # layers, relation heads

        # stage 2 corpus and stage 3 task data, checked against the student
        self.data2 = CausalLMDataModule(settings.data2) if self.distill.stage2.tokens > 0 else None
        self.data3 = DistillDataModule(settings.data3)
        for dm in (self.data2, self.data3):
            if dm is None:
                continue
            dm.prepare_data()
            resolve_vocab(self.student_cfg, dm.tokenizer.vocab_size, dm.tokenizer.name)
            check_seq_len(dm.cfg.seq_len, self.student_cfg, "student")
        per_step = settings.accumulate * settings.world_size
        d2, d3 = settings.data2, settings.data3
        self.steps2 = math.ceil(self.distill.stage2.tokens / (d2.batch_size * d2.seq_len * per_step)) \
            if self.data2 is not None else 0
        self.steps3 = self.kd.steps if self.kd.steps is not None else \
            math.ceil(self.kd.epochs * len(self.data3.train_blocks) / (d3.batch_size * per_step))
        self.weights: dict[str, torch.Tensor] = {}
        self.requeued = False  # a Slurm preemption ended a stage: the requeued job resumes it
        self.metrics: dict[str, Any] = {
            "teacher": self.teacher.source, "student_parameters": self.student.model.num_parameters(),
            "quantized_linears": len(self.student.quantized_names),
            "planned_steps": {"stage2": self.steps2, "stage3": self.steps3}, "resumed_from": settings.resume_path}

    def _local_tokenizer(self) -> None:
        """A hub teacher's tokenizer, saved once into the run folder: the data module reads local folders only."""
        teacher, settings = self.teacher, self.settings
        if Path(teacher.source).is_dir():
            return
        uses = [d for d in (settings.data2, settings.data3) if d.tokenizer == self.distill.teacher]
        if not uses:
            return
        from transformers import AutoTokenizer

        folder = self.out_dir / "teacher_tokenizer"
        if not folder.is_dir():
            try:
                tokenizer = AutoTokenizer.from_pretrained(teacher.source,
                                                          trust_remote_code=self.distill.trust_remote_code)
            except Exception as err:  # noqa: BLE001 - transformers raises many types
                raise ConfigError(f"the tokenizer of distill.teacher={teacher.source!r} could not be loaded "
                                  f"({type(err).__name__}); set data.tokenizer to a local tokenizer folder") from None
            tokenizer.save_pretrained(folder)
        for data in uses:
            data.tokenizer = str(folder)

    def build(self, optim: OptimConfig) -> PretrainModule:
        return PretrainModule(to_dict(self.student_cfg), to_dict(self.settings.quant), to_dict(optim),
                              compile=self.cfg.get("compile", False))

    def _calibrate(self, student: PretrainModule) -> dict[str, float]:
        """Fit the new norms' gains on the first training batches of stage 2's corpus (stage 3's without one)."""
        data = self.data2 if self.data2 is not None else self.data3
        batches = itertools.islice(iter(data.train_dataloader()), CALIBRATION_BATCHES)
        residuals = calibrate_new_norms(student.model, batches)
        log.info("stage 1: %d new norms calibrated on %d batches (mean relative residual %.3f)", len(residuals),
                 CALIBRATION_BATCHES, sum(residuals.values()) / max(len(residuals), 1))
        return residuals

    def _checkpoint_for(self, stage: int) -> str | None:
        return self.settings.resume_path if self.resume_stage == stage else None

    def stage1(self) -> None:
        """Teacher weights into the ternary student (or a stage-1/2/3 checkpoint's weights when resuming)."""
        student, distill = self.student, self.distill
        if self.resume_stage == 0:
            origin = "a fresh student shaped by `model`" if distill.student == "config" else \
                f"{distill.student_init} weights into the ternary student" if distill.student_init else \
                "teacher weights into the ternary student"
            log.info("stage 1/3 %s: %s", STAGES[1][0], origin)
            weights = self.student_init if self.student_init is not None else self.teacher.model.state_dict()
            new_norms = load_teacher_weights(student.model, weights) if distill.student == "teacher" else []
            self.student_init = None
            residuals = self._calibrate(student) if new_norms and distill.norm_init == "calibrated" else {}
            path = self.out_dir / STAGES[1][1] / STAGE1_FILE
            atomic_torch_save({"state_dict": student.state_dict(), "hyper_parameters": dict(student.hparams),
                               "distill": {"stage": 1, "name": STAGES[1][0]}}, path)
            self.metrics["stage1"] = {"checkpoint": str(path), "weights_from": distill.student_init or "teacher"
                                      if distill.student == "teacher" else None, "new_norms": len(new_norms),
                                      "norm_init": distill.norm_init if new_norms else None}
            if residuals:
                self.metrics["stage1"]["norm_residual_mean"] = sum(residuals.values()) / len(residuals)
            if distill.eval_stages:
                self.metrics["stage1"]["val"] = _student_loss(student.model, self.data3)
        else:
            check_resume(self.settings.resume_path, student)
            self.metrics["stage1"] = {"skipped": f"resumed from a stage-{self.resume_stage} checkpoint"}
            if self.resume_stage <= 2:  # stage 2 starts from (or its weights are) the checkpoint's
                student.load_state_dict(self.settings.resume["state_dict"])
        self.weights = student.model.state_dict()

    def stage2(self) -> None:
        """Continual pre-training with next-token cross-entropy."""
        if self.resume_stage > 2:
            return
        if self.steps2 == 0:
            self.metrics["stage2"] = {"skipped": "distill.stage2.tokens=0"}
            return
        module = self.build(_with_warmup(self.settings.optim2, self.distill.stage2.warmup_fraction, self.steps2))
        module.model.load_state_dict(self.weights)
        run = _trainer(self.cfg, 2, self.steps2, self.out_dir / STAGES[2][1], self.settings, module, step_plans=True)
        self.metrics["stage2"] = _fit(run, module, self.data2, self._checkpoint_for(2))
        if run.requeued:
            self.requeued = True
            return
        if self.distill.eval_stages or self.steps3 == 0:
            self.metrics["stage2"]["val"] = _student_loss(module.model, self.data3)
        self.weights = module.model.state_dict()

    def stage3(self) -> None:
        """Distillation: CE + logit KL + attention-relation KL against the teacher."""
        kd, settings = self.kd, self.settings
        if self.steps3 == 0:
            self.metrics["stage3"] = {"skipped": "distill.stage3.steps=0"}
            return
        module = DistillModule(to_dict(self.student_cfg), to_dict(settings.quant),
                               to_dict(_with_warmup(settings.optim3, kd.warmup_fraction, self.steps3)), to_dict(kd),
                               compile=self.cfg.get("compile", False))
        module.model.load_state_dict(self.weights)
        cache = None
        if kd.logit_cache.enabled and kd.logit_weight > 0:
            root = Path(kd.logit_cache.dir) if kd.logit_cache.dir else self.out_dir / "teacher_logits"
            identity = {"teacher": self.teacher.fingerprint, "data": self.data3.tokenized._fingerprint,
                        "layout": settings.data3.layout, "val_fraction": settings.data3.val_fraction,
                        "temperature": kd.temperature}
            cache = TeacherLogitCache(root, len(self.data3.train_blocks), settings.data3.seq_len,
                                      kd.logit_cache.top_k, identity)
        module.attach_teacher(self.teacher, cache)
        ckpt = self._checkpoint_for(3)
        if ckpt is not None:
            check_resume(ckpt, module)
        run = _trainer(self.cfg, 3, self.steps3, self.out_dir / STAGES[3][1], settings, module, step_plans=False)
        self.metrics["stage3"] = _fit(run, module, self.data3, ckpt)
        if run.requeued:
            self.requeued = True
            return
        if cache is not None:
            self.metrics["stage3"]["logit_cache"] = {"dir": str(cache.dir), "filled": cache.filled_count()}
        self.metrics["stage3"]["val"] = _student_loss(module.model, self.data3)

    def run(self) -> dict[str, Any] | None:
        """The remaining stages; their metrics, or None when Slurm preempted a stage (the requeued job goes on)."""
        metrics = self.metrics
        if self.distill.eval_teacher:
            metrics["teacher_val"] = _teacher_loss(self.teacher, self.data3)
            log.info("teacher: validation loss %.4f, perplexity %.2f", metrics["teacher_val"]["loss"],
                     metrics["teacher_val"]["perplexity"])
        for stage in (self.stage1, self.stage2, self.stage3):
            stage()
            gc.collect()  # the previous stage's module, optimizer and trainer
            if self.requeued:
                log.info("preempted in %s; the requeued job resumes there (ckpt_path=auto)", stage.__name__)
                return None
        final = metrics["stage3"].get("val") or metrics.get("stage2", {}).get("val") or metrics["stage1"].get("val")
        if final is None:  # stage 1 only, not evaluated: the stage-1 (or resumed) student
            self.student.model.load_state_dict(self.weights)
            final = _student_loss(self.student.model, self.data3)
        metrics["student_val"] = final
        metrics["data"] = self.data3.stats()
        return metrics


def run_distillation(cfg: DictConfig) -> dict[str, Any]:
    """Run the stages of BitDistill that remain (all of them, or those after a resumed checkpoint)."""
    metrics = DistillationRun(cfg).run()
    if metrics is None:
        finish_run(cfg, None)
        return {"requeued": True}
    return finish_run(cfg, metrics)
