"""The synthetic audio-visual corpus (`avtime synth`): scenes, physics, rendering, mp4 output."""
