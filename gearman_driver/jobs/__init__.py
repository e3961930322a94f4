"""Gearman::Driver's Loader and Job: worker modules -> classes -> job specs (loader), the job
table the master and the console read (table). See docs/architecture.md.
"""
