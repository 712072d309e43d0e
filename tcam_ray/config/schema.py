"""The config schema: every key a YAML file or `--set` may name, with its default.

Each section is a dataclass; `Config` nests them. Later stages add their own
sections here, so one file shows every knob of the tool.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from .loader import ConfigError


def require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


@dataclass
class DatasetConfig:
    """A dataset in the YouTube-Objects layout (see README, "Datasets")."""

    name: str = "synthetic"
    # Frames live at {root}/{frame_id}; frame ids come from the metadata files.
    root: str = "data/synthetic"
    # Folder with class_id.yaml and {train,val,test}/*.txt; default {root}/metadata.
    metadata: Optional[str] = None
    # Read every frame's header while indexing ("all"), or one frame per train
    # shot ("first": faster on huge datasets; sizes of the rest are assumed equal).
    probe_frames: Literal["all", "first"] = "all"
    # Threads that list shots and read frame headers while indexing.
    index_threads: int = 8

    def __post_init__(self):
        require(self.index_threads >= 1, "dataset.index_threads", "must be at least 1")


@dataclass
class SynthConfig:
    """Knobs of `tcam-ray synth` (see tcam_ray/data/synthetic.py for what each controls)."""

    classes: int = 4  # object classes (at most 12)
    videos: int = 4  # training videos per class
    val_videos: int = 1  # validation videos per class
    test_videos: int = 1  # test videos per class
    shots: int = 3  # shots per video
    frames: int = 24  # frames per shot
    size: int = 96  # frame height in pixels
    aspect: float = 4 / 3  # frame width / height
    eval_stride: int = 4  # every k-th frame of a val/test shot is listed (when an object is visible)
    second_object_prob: float = 0.25  # chance a video shows two objects of its class
    occluder_prob: float = 0.5  # chance a shot has an occluder passing in front
    leave_frame_prob: float = 0.3  # chance a shot's object path runs partly out of the frame
    distractors: int = 6  # distractor shapes per video
    backgrounds: int = 16  # pool of scenes shared by all classes; each shot draws one
    jpeg_quality: int = 92
    seed: int = 0

    def __post_init__(self):
        require(1 <= self.classes <= 12, "synth.classes", f"must be between 1 and 12, got {self.classes}")
        for key in ("videos", "shots", "frames", "eval_stride", "backgrounds"):
            require(getattr(self, key) >= 1, f"synth.{key}", "must be at least 1")
        for key in ("val_videos", "test_videos", "distractors"):
            require(getattr(self, key) >= 0, f"synth.{key}", "must be at least 0")
        require(self.size >= 32, "synth.size", f"must be at least 32 pixels, got {self.size}")
        require(0.25 <= self.aspect <= 4, "synth.aspect", f"must be between 0.25 and 4, got {self.aspect}")
        for key in ("second_object_prob", "occluder_prob", "leave_frame_prob"):
            value = getattr(self, key)
            require(0.0 <= value <= 1.0, f"synth.{key}", f"is a probability, got {value}")
        require(1 <= self.jpeg_quality <= 100, "synth.jpeg_quality", "must be between 1 and 100")


@dataclass
class RunConfig:
    """Where a verb writes its run folder: {root}/{name}."""

    root: str = "runs"  # a folder (on a cluster: one every node mounts, e.g. NFS)
    name: Optional[str] = None  # default: {verb}-{timestamp}
    # Ray's own state of a run (Ray Train's run snapshot, Tune's experiment for resuming; the model's
    # checkpoints are the run folder's): a folder or a URI Ray accepts (s3://bucket/runs, gs://...);
    # default {run folder}/ray.
    storage: Optional[str] = None


@dataclass
class ModelConfig:
    """The stage-1 classifier: a torchvision ResNet encoder and a WGAP head."""

    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    pretrained: Optional[Literal["imagenet"]] = None  # torchvision's weights (needs the internet once)
    weights: Optional[str] = None  # a local state dict for the encoder instead
    # 1: layer4 keeps stride 16 (finer CAMs: 14x14 at 224, as WSOL models do); 2: torchvision's 32.
    layer4_stride: Literal[1, 2] = 1
    # 1 as well: layer3 and layer4 at stride 8 (CAMs 8x8 instead of 4x4 at 64 px: for small frames)
    layer3_stride: Literal[1, 2] = 2


@dataclass
class InputConfig:
    """Frames as the model sees them (decode, resize, augment in the Ray Data pipeline)."""

    resize_size: int = 256  # frames are resized to this square before cropping
    crop_size: int = 224  # random crop for training; eval frames are resized to this
    flip: bool = True  # random horizontal flip for training
    # "one_per_shot": each epoch sees one random frame of every train shot (the paper);
    # "all": every frame of every shot.
    sampling: Literal["one_per_shot", "all"] = "one_per_shot"
    batch_size: int = 32  # per worker
    decode_batch_size: int = 128  # frames per Ray Data decode task
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])

    def __post_init__(self):
        require(self.crop_size >= 32, "input.crop_size", f"must be at least 32, got {self.crop_size}")
        require(self.resize_size >= self.crop_size, "input.resize_size",
                f"must be >= input.crop_size ({self.crop_size}), got {self.resize_size}")
        require(self.batch_size >= 1 and self.decode_batch_size >= 1, "input.batch_size", "must be at least 1")
        require(len(self.mean) == 3 and len(self.std) == 3, "input.mean", "mean and std need 3 values (RGB)")


@dataclass
class TrainConfig:
    """Optimisation (SGD with step decay), precision and checkpoints of one training."""

    epochs: int = 100
    lr: float = 0.001
    momentum: float = 0.9
    # The TCAM/CoLo-CAM reference code's SGD uses Nesterov momentum; the YTO recipes turn it on.
    nesterov: bool = False
    weight_decay: float = 1e-4
    step_size: int = 15  # epochs between lr decays
    gamma: float = 0.9  # lr decay factor
    amp: bool = True  # float16 autocast + GradScaler on CUDA (no effect on CPU)
    cpu_bf16: bool = False  # bfloat16 autocast on CPU (slower than float32 on most CPUs)
    keep_last: int = 2  # epoch checkpoints kept in checkpoints/, besides the best by CorLoc and by accuracy
    seed: int = 0
    # Testing recovery: rank 0 raises once when this epoch starts (a marker file makes it once).
    fail_at_epoch: Optional[int] = None

    def __post_init__(self):
        require(self.epochs >= 1, "train.epochs", "must be at least 1")
        require(self.lr > 0, "train.lr", f"must be positive, got {self.lr}")
        require(self.step_size >= 1, "train.step_size", "must be at least 1")
        require(self.keep_last >= 1, "train.keep_last", "must be at least 1")
        require(not self.nesterov or self.momentum > 0, "train.nesterov",
                f"Nesterov momentum needs train.momentum > 0, got {self.momentum}")


@dataclass
class ScaleConfig:
    """Where training runs: the embedded local Ray, or a cluster."""

    address: Optional[str] = None  # a Ray cluster ("auto", "ray://...", host:port); default: RAY_ADDRESS or local
    num_workers: int = 1  # Ray Train workers (DDP: gloo on CPU, nccl on GPU)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # Where Ray puts the workers: "pack" fills a node first (NCCL stays inside a node), "spread" one per node
    # where the cluster allows, "strict_spread" one per node or not at all (Ray's placement strategies).
    placement: Literal["pack", "spread", "strict_spread"] = "pack"
    # torch threads of each training worker (default: its whole CPUs); more than the CPUs it reserves lets
    # its convolutions use cores that the decode tasks leave idle most of the time
    torch_threads: Optional[int] = None
    max_failures: int = 1  # a crashed worker group restarts from the last checkpoint this often
    # Local Ray only: CPUs it may use (default: all of the machine's).
    local_cpus: Optional[int] = None

    def __post_init__(self):
        require(self.num_workers >= 0, "scale.num_workers", "must be >= 0 (0 runs the loop in the driver)")
        require(self.cpus_per_worker > 0, "scale.cpus_per_worker", "must be positive")
        require(self.torch_threads is None or self.torch_threads >= 1, "scale.torch_threads", "must be at least 1")


@dataclass
class EvalConfig:
    """How CorLoc / MaxBoxAcc(V2) are measured: clovaai/wsolevaluation's BoxEvaluator
    (tcam_ray/evaluation/boxes.py). CorLoc and MaxBoxAcc use the largest contour's box,
    MaxBoxAccV2 the best of all contours' boxes."""

    split: Literal["val", "test"] = "val"  # the split validated during training
    # map path: "wsol" = bicubic to 224 + min-max normalisation (wsolevaluation), "tcam" = TCAM's bilinear, as is
    protocol: Literal["wsol", "tcam"] = "wsol"
    thresholds: int = 100  # N map thresholds np.arange(0, 1, 1/N) swept for the best one
    iou_thresholds: list[int] = field(default_factory=lambda: [30, 50, 70])  # MaxBoxAccV2, in percent
    cam_target: Literal["true", "predicted"] = "true"  # whose class the map is drawn for
    # Stage 1: CAM methods validated besides cam.method, each with its own best checkpoint
    # (best-corloc-layercam, ...: CoLo-CAM's LayerCAM store from the best LayerCAM localiser).
    cam_methods: list[Literal["cam", "gradcampp", "layercam"]] = field(default_factory=list)


@dataclass
class CamConfig:
    """The CAM store: the maps of every training frame, computed once after stage 1."""

    method: Literal["cam", "gradcampp", "layercam"] = "cam"
    size: int = 56  # stored maps are size x size
    dtype: Literal["uint8", "float16"] = "uint8"
    batch_size: int = 64
    actors: int = 1  # actor pool size, each holding the model
    cpus_per_actor: float = 0.5  # fractional: whole CPUs per actor can starve Ray Data's read tasks


@dataclass
class TcamConfig:
    """Stage 2 (TCAM): pseudo-labels from neighbour-frame CAMs, the decoder and its losses.
    Defaults are the paper's."""

    cams: Optional[str] = None  # the CAM store (tcam-ray cams): its maps make the pseudo-labels
    # The stage-1 checkpoint the decoder sits on: "store" (the one the CAM store was made from), the name
    # of a checkpoint beside it in its run ("best-top1": the TCAM code's best classifier under CAMs of the
    # best localiser), or a path.
    classifier: str = "store"
    # Training rows are clips of `clip` consecutive frames of a shot (TCAM 1; CoLo-CAM 2), drawn from the
    # central clip_window fraction of the shot's frames (CoLo-CAM 0.6); input.batch_size counts clips.
    clip: int = 1
    clip_window: float = 1.0
    # CAM temporal max-pooling over the frame and its n neighbours in the shot
    n: int = 1
    direction: Literal["before", "after", "both"] = "before"
    sharpen: Optional[float] = None  # h of exp(h * cam) / max, or none
    # region of interest: Otsu threshold of the pooled CAM, then blobs
    roi: Literal["all", "largest", "densest"] = "all"
    min_size: float = 0.05  # "densest": a densest blob under this fraction of the frame yields to the largest
    # seeds: foreground among the top max_p of the ROI's values, background among the bottom min_p
    max_p: float = 0.6
    min_p: float = 0.1
    fg_seeds: int = 1
    bg_seeds: int = 1
    ksz: int = 3  # seeds dilated by a ksz x ksz square
    weighted_seeds: bool = True  # foreground seeds drawn in proportion to the CAM
    # model
    freeze_classifier: bool = True  # encoder and head of stage 1 stay fixed
    decoder_widths: Optional[list[int]] = None
    # losses: each with a switch and a weight
    self_learning: bool = True
    self_learning_weight: float = 1.0
    crf: bool = True
    crf_weight: float = 2e-9
    crf_sigma_rgb: float = 15.0
    crf_sigma_xy: float = 100.0
    crf_scale: float = 1.0
    # CoLo-CAM's colour CRF over all pixels of a clip (needs clip >= 2); "adaptive": weight * L / |L|
    # per clip with |L| held constant (CoLo-CAM's default), else weight * L.
    colour_crf: bool = False
    colour_crf_weight: float = 9.0
    colour_crf_sigma_rgb: float = 15.0
    colour_crf_scale: float = 1.0
    colour_crf_adaptive: bool = True
    max_size: bool = True
    max_size_weight: float = 0.01
    elb_init_t: float = 1.0
    elb_max_t: float = 10.0
    elb_mulcoef: float = 1.01
    entropy: bool = False
    entropy_weight: float = 1.0
    size_band: bool = False
    size_band_weight: float = 1.0
    size_band_margin: float = 0.001  # the paper code's sizefg_tmp_tc_eps
    bg_larger: bool = False
    bg_larger_weight: float = 1.0
    outside_box: bool = False
    outside_box_weight: float = 1.0

    def __post_init__(self):
        require(self.n >= 0, "tcam.n", f"must be >= 0 (0: no temporal pooling), got {self.n}")
        require(0 < self.max_p <= 1 and 0 < self.min_p <= 1, "tcam.max_p", "max_p and min_p are fractions in (0, 1]")
        require(self.fg_seeds >= 0 and self.bg_seeds >= 0, "tcam.fg_seeds", "seed counts must be >= 0")
        require(self.ksz >= 1 and self.ksz % 2 == 1, "tcam.ksz", f"must be an odd size >= 1, got {self.ksz}")
        require(0 <= self.min_size < 1, "tcam.min_size", "is a fraction of the frame in [0, 1)")
        require(0 < self.crf_scale <= 1, "tcam.crf_scale", "must be in (0, 1]")
        require(0 < self.colour_crf_scale <= 1, "tcam.colour_crf_scale", "must be in (0, 1]")
        require(self.clip >= 1, "tcam.clip", f"must be at least 1, got {self.clip}")
        require(0 < self.clip_window <= 1, "tcam.clip_window", f"is a fraction in (0, 1], got {self.clip_window}")
        require(not self.colour_crf or self.clip >= 2, "tcam.colour_crf",
                f"couples the frames of a clip: set tcam.clip to 2 or more (got {self.clip})")
        for name, value in vars(self).items():
            if name.endswith(("_weight", "_margin")):
                require(value >= 0, f"tcam.{name}", f"must be >= 0, got {value}")


def colocam_defaults() -> TcamConfig:
    """CoLo-CAM's stage 2 (its code's command): clips of 2 frames from the central 60% of a shot, LayerCAM
    seeds without temporal pooling (the store's maps), the largest ROI, 1000 + 1000 seeds, the colour CRF."""
    return TcamConfig(classifier="best-top1", clip=2, clip_window=0.6, n=0, roi="largest", max_p=0.7, min_p=0.1,
                      fg_seeds=1000, bg_seeds=1000, colour_crf=True)


@dataclass
class DemoConfig:
    """`tcam-ray demo`: how often the chain runs, each stage's optimisation (the train section gives the
    rest), the n ablation of TCAM, and the stage-2 settings of its CoLo-CAM run."""

    seeds: int = 1  # the chain runs with train.seed, train.seed + 1, ... (the generated data stay the same)
    cam_epochs: int = 10
    cam_lr: float = 0.01
    tcam_epochs: int = 6
    tcam_lr: float = 0.01
    ablation: list[int] = field(default_factory=lambda: [0, 1, 2, 3])  # n values trained and compared
    colocam: TcamConfig = field(default_factory=colocam_defaults)  # the tcam section of the CoLo-CAM run
    colocam_epochs: int = 6
    colocam_lr: float = 0.01

    def __post_init__(self):
        require(self.seeds >= 1, "demo.seeds", "must be at least 1")
        require(min(self.cam_epochs, self.tcam_epochs, self.colocam_epochs) >= 1, "demo.cam_epochs",
                "epochs must be at least 1")
        require(all(n >= 0 for n in self.ablation), "demo.ablation", "n values must be >= 0")


@dataclass
class VideoConfig:
    """Video files in: `tcam-ray localize` (boxes and annotated videos) and `tcam-ray ingest`
    (tagged videos into the dataset layout). See tcam_ray/video/."""

    max_frames: Optional[int] = None  # read only the first N frames of each video (both verbs)
    # localize
    batch_size: int = 16  # frames per model forward
    # Map threshold for the boxes; None: the best threshold on val recorded for the checkpoint's
    # epoch in its run's metrics.jsonl, else 0.5.
    threshold: Optional[float] = None
    overlay_alpha: float = 0.45  # weight of the heat map over the frame
    sheet_frames: int = 12  # frames sampled evenly for the contact sheet
    # Presence in [0, 1] (stage 2: peak foreground probability; stage 1: class probability rescaled so
    # chance is 0): below it a frame gets no box. 0.5: the model's own even odds; 0: never abstain.
    min_presence: float = 0.5
    # Smooth boxes along each shot (tcam_ray/video/track.py): a Viterbi track over candidate boxes
    # maximising IoU with each frame's own box minus smooth_weight * exp(-dt / smooth_memory_s) *
    # (1 - IoU) per frame step, then each box averaged over time (Gaussian, sigma smooth_sigma_s seconds).
    smooth: bool = True
    smooth_weight: float = 1.0  # changing box between frames costs as much as leaving the frame's own box
    smooth_memory_s: float = 0.5  # frames further apart in time constrain each other less
    smooth_sigma_s: float = 0.1  # about vision's integration time: change faster than this is jitter
    actors: int = 1  # with a Ray cluster: actors, each holding the model and doing whole videos
    cpus_per_actor: float = 0.5  # fractional: whole CPUs per actor can leave none for Ray Data's decode tasks
    # ingest
    fps: Optional[float] = None  # keep frames at this rate (None: every frame)
    max_side: Optional[int] = None  # frames whose longer side exceeds this are downscaled to it
    jpeg_quality: int = 92
    # scene cuts: mean absolute difference of consecutive small grey frames (0-255) that is at least
    # cut_min_diff and cut_ratio times the median difference of the cut_window frames either side
    cut_ratio: float = 3.0
    cut_min_diff: float = 10.0
    cut_window: int = 12
    min_shot_frames: int = 5  # a cut closer than this to the previous one (or to the end) is dropped

    def __post_init__(self):
        require(self.max_frames is None or self.max_frames >= 1, "video.max_frames", "must be at least 1")
        require(self.batch_size >= 1, "video.batch_size", "must be at least 1")
        require(self.threshold is None or 0 <= self.threshold <= 1, "video.threshold", "is a map value in [0, 1]")
        require(0 <= self.overlay_alpha <= 1, "video.overlay_alpha", "must be in [0, 1]")
        require(0 <= self.min_presence <= 1, "video.min_presence", "is a presence in [0, 1]")
        require(self.smooth_weight >= 0, "video.smooth_weight", "must be at least 0")
        require(self.smooth_memory_s > 0, "video.smooth_memory_s", "must be positive (seconds)")
        require(self.smooth_sigma_s >= 0, "video.smooth_sigma_s", "must be at least 0 (seconds; 0: no average)")
        require(self.sheet_frames >= 1, "video.sheet_frames", "must be at least 1")
        require(self.actors >= 1, "video.actors", "must be at least 1")
        require(self.cpus_per_actor > 0, "video.cpus_per_actor", "must be positive")
        require(self.fps is None or self.fps > 0, "video.fps", "must be positive")
        require(self.max_side is None or self.max_side >= 32, "video.max_side", "must be at least 32 pixels")
        require(1 <= self.jpeg_quality <= 100, "video.jpeg_quality", "must be between 1 and 100")
        require(self.cut_ratio > 1 and self.cut_min_diff >= 0, "video.cut_ratio", "cut_ratio > 1 and cut_min_diff >= 0")
        require(self.cut_window >= 1 and self.min_shot_frames >= 1, "video.cut_window",
                "cut_window and min_shot_frames must be at least 1")


@dataclass
class LoggingConfig:
    """Experiment logging of each epoch's metrics and the config (README: "Experiment logging"); each
    logger needs its package (pip install 'tcam-ray[logging]')."""

    tensorboard: bool = False  # event files in {run folder}/tensorboard
    mlflow: bool = False
    mlflow_tracking_uri: Optional[str] = None  # default: a file store in {run folder}/mlruns
    mlflow_experiment: Optional[str] = None  # default: the run's name
    wandb: bool = False
    wandb_mode: Literal["offline", "online"] = "offline"  # offline: `wandb sync` uploads the run later
    wandb_project: str = "tcam-ray"
    wandb_dir: Optional[str] = None  # wandb/ goes in here; default: the run folder
    # Seconds between step-progress lines when the output is not a terminal (a terminal's line is redrawn).
    progress_interval: float = 10.0

    def __post_init__(self):
        require(self.progress_interval >= 0, "logging.progress_interval", "must be at least 0 seconds")


# Keys the schema no longer has, with why they went. A config file or --set naming one is an
# error that says so; a config saved before the removal (a checkpoint's config.yaml) drops them.
RETIRED_KEYS: dict[str, str] = {
    "eval.box_mode": "the metric always uses the largest contour for CorLoc and MaxBoxAcc, "
                     "all contours for MaxBoxAccV2",
}


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    tcam: TcamConfig = field(default_factory=TcamConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
