"""Online models (River) used inside the stream, and their evaluation harnesses on real data.

Everything here is pure: no Kafka, no Faust, no network. Each model has a state that can be
checkpointed and restored (`to_state()` / `from_state()`), carries a version, and explains its
scores. Evaluations live in `models/eval/` and run as `pagerstream models evaluate MODEL --data PATH`.
"""
