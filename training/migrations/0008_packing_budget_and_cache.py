from django.db import migrations, models

# Jobs made before these fields read their corpus one sequence per line ("lines"), trained
# max_epochs passes (no token budget) and always wrote an activation cache ("always"): their rows
# say so. New jobs default to the corpus format's packing (recorded by job_create), no budget and
# "auto" (training.defaults). No disk was planned for them (disk_plan null).
PACKING_CHOICES = [('lines', 'lines'), ('documents', 'documents'), ('concat', 'concat')]
CACHE_CHOICES = [('auto', 'auto'), ('always', 'always'), ('never', 'never')]
PACKING_HELP = "lines, documents or concat (engine.text.packing)."
CACHE_HELP = "auto, always or never: whether the activations are cached on disk."


class Migration(migrations.Migration):

    dependencies = [
        ('training', '0007_hook_points_and_special_tokens'),
    ]

    operations = [
        migrations.AddField(
            model_name='trainingjob',
            name='packing',
            field=models.CharField(blank=True, choices=PACKING_CHOICES, default='lines', help_text=PACKING_HELP,
                                   max_length=16, null=True),
        ),
        migrations.AddField(
            model_name='trainingjob',
            name='training_tokens',
            field=models.BigIntegerField(blank=True, default=None, null=True,
                                         help_text='Tokens the SAE trains on at most; null: max_epochs passes.'),
        ),
        migrations.AddField(
            model_name='trainingjob',
            name='cache_activations',
            field=models.CharField(blank=True, choices=CACHE_CHOICES, default='always', help_text=CACHE_HELP,
                                   max_length=8),
        ),
        migrations.AddField(
            model_name='trainingjob',
            name='disk_plan',
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name='trainingjob',
            name='packing',
            field=models.CharField(blank=True, choices=PACKING_CHOICES, default=None, help_text=PACKING_HELP,
                                   max_length=16, null=True),
        ),
        migrations.AlterField(
            model_name='trainingjob',
            name='cache_activations',
            field=models.CharField(blank=True, choices=CACHE_CHOICES, default='auto', help_text=CACHE_HELP,
                                   max_length=8),
        ),
    ]
