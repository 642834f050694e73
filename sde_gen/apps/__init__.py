"""The Hydra apps: thin orchestration over the library; nothing in the library imports them.

    train     sde-gen-train    (python -m sde_gen.train)     sde_gen.training.train
    sample    sde-gen-sample   (python -m sde_gen.sample)    sde_gen.samplers + sde_gen.evaluation
    evaluate  sde-gen-eval     (python -m sde_gen.evaluate)  sde_gen.likelihood
    report    sde-gen-report   (python -m sde_gen.report)    aggregates metrics of (multi)runs
    demo      python -m sde_gen.demo                         the forward processes, drawn
"""
