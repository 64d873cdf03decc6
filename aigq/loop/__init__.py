"""The daily closed loop (``aigq loop --days N``; paper Eq. 15, Figure 3): ``days`` simulates what the deployed system
shows each day and the clicks it gets, ``deploy`` is the deployment the loop asks (in process or through Ray Serve),
``runner`` drives the days: CTR retrain, daily IL-GRPO, Think index, rollout, the day's figures."""
