"""The Slurm executor: `vitq slurm` (dispatcher.py) submits each runnable job of its pool with sbatch from a login
node and holds nothing while the queue is empty; the batch script (batch.py) starts one supervisor per node with
srun (node.py), the nodes meet on the allocation's first host (place.py), and commands.py is the only code that
runs Slurm's commands. docs/slurm.md says what each Slurm event does to a job."""
