"""The model table at the start of fit, without the FLOPs columns Lightning fills with 0.

Lightning counts FLOPs only when a module defines `example_input_array`; ours don't (sequence shapes
come from the data), so its table showed a FLOPs column of zeros and "Total FLOPs: 0". This is
Lightning's RichModelSummary with those two dropped.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count


class ModelTable(RichModelSummary):
    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int = 0,
                  **summarize_kwargs: Any) -> None:
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style="bold magenta")
        for name, _ in columns:  # the first is the row index, named " "
            table.add_column(name, justify="right" if name.startswith("Params") else "left")
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        console.print(f"Trainable params: {get_human_readable_count(trainable_parameters)}  "
                      f"Non-trainable params: {get_human_readable_count(total_parameters - trainable_parameters)}  "
                      f"Total params: {get_human_readable_count(total_parameters)}  "
                      f"Estimated size: {model_size:,.1f} MB")
