REAL_NAME = {"Brain": "Brain", "Chest": "Chest X-ray film"}
