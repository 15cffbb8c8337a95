"""Combining stores: concat and append, their gene maps, row orders and the bucketed reorder."""
