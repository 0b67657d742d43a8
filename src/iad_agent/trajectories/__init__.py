"""Trajectory datasets for supervised fine-tuning (AgentIAD perceptive / comparative, IndusAgent Indus-CoT).

A teacher policy that knows the ground truth drives the real tools through the one agent loop;
the resulting trajectories are exported through ``Trajectory.to_messages`` as a Hugging Face
dataset (TRL) and a LLaMA-Factory ShareGPT file, with a category / image split and a card.
"""

from iad_agent.trajectories.builder import BuildConfig, BuildResult, BuiltTrajectory, build, build_trajectory
from iad_agent.trajectories.splits import Split, make_split
from iad_agent.trajectories.styles import STYLES, parse_style_weights
from iad_agent.trajectories.teacher import TeacherPolicy

__all__ = ["STYLES", "BuildConfig", "BuildResult", "BuiltTrajectory", "Split", "TeacherPolicy", "build",
           "build_trajectory", "make_split", "parse_style_weights"]
