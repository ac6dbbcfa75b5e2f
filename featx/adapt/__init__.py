"""adapt"""
