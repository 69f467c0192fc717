"""Pot controller: AE detection/prediction/quench, feeding, ACD and amperage control.

Pure, synchronous logic on what a PLC exposes (see ``potctl.plant``).
"""
