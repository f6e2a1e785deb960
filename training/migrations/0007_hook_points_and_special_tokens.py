from django.db import migrations, models

# Jobs made before these fields read block outputs (resid_post) and kept every token, special ones
# included, as the tokenizer gave them (no BOS put in front): their rows say so. New jobs default
# to excluding special tokens and prepending a BOS (training.defaults).
EXCLUDE_HELP = "No activation rows at BOS/CLS/SEP/EOS/padding positions."
PREPEND_HELP = "A causal LM's sequences start with its tokenizer's BOS."


class Migration(migrations.Migration):

    dependencies = [
        ('training', '0006_architectures_from_the_registry'),
    ]

    operations = [
        migrations.AddField(
            model_name='trainingjob',
            name='hook_point',
            field=models.CharField(blank=True, choices=[('resid_post', 'resid_post'), ('resid_pre', 'resid_pre'), ('mlp_out', 'mlp_out'), ('attn_out', 'attn_out')], default='resid_post', help_text='resid_post, resid_pre, mlp_out or attn_out of block layer_number.', max_length=16),
        ),
        migrations.AddField(
            model_name='trainingjob',
            name='exclude_special_tokens',
            field=models.BooleanField(blank=True, default=False, help_text=EXCLUDE_HELP, null=True),
        ),
        migrations.AddField(
            model_name='trainingjob',
            name='prepend_bos',
            field=models.BooleanField(blank=True, default=False, help_text=PREPEND_HELP, null=True),
        ),
        migrations.AlterField(
            model_name='trainingjob',
            name='exclude_special_tokens',
            field=models.BooleanField(blank=True, default=True, help_text=EXCLUDE_HELP, null=True),
        ),
        migrations.AlterField(
            model_name='trainingjob',
            name='prepend_bos',
            field=models.BooleanField(blank=True, default=True, help_text=PREPEND_HELP, null=True),
        ),
    ]
