"""Clean teachers for the weak-to-strong unlearner: a registry of recipes, teacher training and caching."""
from .recipes import RECIPES, TeacherRecipe, ensure_not_student, get_recipe, state_hash, truncate_layers
from .training import data_hash, teacher_dir, teacher_metadata, train


def build(recipe: str, num_labels: int, seed: int = 0):
    """An untrained teacher from `recipe` (name or folder): a fresh classifier with its own tokenizer."""
    return get_recipe(recipe).build(num_labels, seed)


__all__ = ["RECIPES", "TeacherRecipe", "build", "data_hash", "ensure_not_student", "get_recipe", "state_hash",
           "teacher_dir", "teacher_metadata", "train", "truncate_layers"]
