"""What a plugin's components look like: one module per kind of contract, every name re-exported here.

Every registered component is a class with a nested ``Options`` pydantic model (``extra="forbid"``): the
recipe section that selects the component is validated against it, so a typo in an option is reported with
its dotted TOML path before anything trains. The base classes fix the constructor and the methods the
engine calls; they import no torch so that ``igdm-kit --help`` stays light.

Inputs everywhere are images in [0, 1]; normalization is a layer inside the model.
"""

from igdm_kit.interfaces.callbacks import Callback, CallbackContext, FitState, Order
from igdm_kit.interfaces.data import DatasetInfo, DatasetPlugin, ImageSource
from igdm_kit.interfaces.evaluation import LP_NORMS, EvalAttack, EvalContext, EvalProtocol, Threat
from igdm_kit.interfaces.launch import Job, LaunchContext, Launcher, StopRequest
from igdm_kit.interfaces.models import ArchitectureBuilder, ModelFactory, TeacherLoader
from igdm_kit.interfaces.optim import LRSchedule, OptimizerFactory, TrainingPlan
from igdm_kit.interfaces.options import (AddedLater, Fraction, NoOptions, Options, PathOption, RecipePath,
                                         parse_fraction)
from igdm_kit.interfaces.shifts import Shift, ShiftContext, ShiftedSet, ThreatVariant
from igdm_kit.interfaces.tracking import Tracker, TrackerRun
from igdm_kit.interfaces.training import (
                                          AttackOptions,
                                          BatchReduction,
                                          EpochStats,
                                          GradientModule,
                                          InputName,
                                          Method,
                                          ModuleOptions,
                                          SampleTerm,
                                          ScheduleEvent,
                                          StepContext,
                                          TeacherTransform,
                                          TrainingAttack,
)

__all__ = ["AddedLater", "ArchitectureBuilder", "AttackOptions", "BatchReduction", "Callback", "CallbackContext",
           "DatasetInfo", "DatasetPlugin", "EpochStats", "EvalAttack", "EvalContext", "EvalProtocol", "FitState", "Fraction",
           "GradientModule", "ImageSource", "InputName", "Job", "LP_NORMS", "LRSchedule", "LaunchContext", "Launcher", "Method",
           "ModelFactory", "ModuleOptions", "NoOptions", "Options", "Order", "OptimizerFactory", "PathOption",
           "RecipePath", "SampleTerm", "ScheduleEvent", "Shift", "ShiftContext", "ShiftedSet", "StepContext",
           "StopRequest", "TeacherLoader", "TeacherTransform", "Threat", "ThreatVariant", "Tracker", "TrackerRun",
           "TrainingAttack", "TrainingPlan", "parse_fraction"]
